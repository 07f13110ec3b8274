"""Board files shipped with the package: the board client (ledgerlink_client) and drivers, copied to boards."""
