"""distmap's implementation; import the public names from ``distmap`` instead."""
