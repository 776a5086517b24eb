"""Production hosts."""

app_environment = "production"
tls_mode = "acme"
tls_acme_directory = "letsencrypt"  # "letsencrypt-staging" while trying a new host
