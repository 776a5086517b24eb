"""Policy for every host. Each deploy documents its keys and defaults in its data_defaults;
set here only what differs from those defaults everywhere."""

# Connect as root unless an inventory says otherwise (production may use a sudo user).
ssh_user = "root"
