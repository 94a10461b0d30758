"""Session networks: per-session Docker networks, their firewall rules and the egress proxy."""
