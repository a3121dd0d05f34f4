package etcd

// SetKVForTest replaces the store's KV (to inject concurrent writers).
func SetKVForTest(s *Store, kv KV) { s.kv = kv }
