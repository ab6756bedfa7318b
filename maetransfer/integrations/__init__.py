"""Optional adapters that expose maetransfer models to other frameworks (imported only by their users)."""
