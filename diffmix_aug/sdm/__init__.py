"""sdm subpackage."""
