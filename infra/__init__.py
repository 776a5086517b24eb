"""plinth's infrastructure: pyinfra deploys, inventories, templates and the rehearsal tool."""
