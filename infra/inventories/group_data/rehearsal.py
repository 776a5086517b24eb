"""The rehearsal host: a throwaway container on this machine."""

app_environment = "production"  # rehearse exactly what production runs
app_workers = 2
apt_cache_seconds = 86400  # the rootfs is fresh from the mirror already
