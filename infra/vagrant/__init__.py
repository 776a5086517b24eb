"""Vagrant rehearsals: the vagrant-lxc box built from the rehearsal's recipe, and a sandbox."""
