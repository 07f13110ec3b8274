"""Board profiles (<board>.toml) that deploy, provision and the virtual board read."""
