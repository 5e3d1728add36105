"""Pod sandboxes: namespaces, CNI networking, DNS and hosts files."""
