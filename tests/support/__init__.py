"""What the main suite's tests share: the key kit, applications, servers, the cluster."""
