package bolt

import "go.etcd.io/bbolt"

// sub is one of an inbox's state buckets (accepted, blocked, requests,
// senders), created when it is first written. bbolt keeps a bucket inline
// in its parent's page only while it holds no bucket itself, so a state
// bucket with its four lists made up front took a 4 KiB page of its own
// per registered handle; without them, a handle that never accepted,
// blocked or got a request costs a few bytes in a shared page.
type sub struct {
	parent *bbolt.Bucket
	name   []byte
	b      *bbolt.Bucket // nil while the list does not exist (it is empty) or is not yet opened
	opened bool          // b was looked up: opening a bucket costs an allocation, and most appends need two lists of four
}

func openSub(parent *bbolt.Bucket, name []byte) *sub {
	return &sub{parent: parent, name: name}
}

// bucket returns the list's bucket, nil if it does not exist.
func (s *sub) bucket() *bbolt.Bucket {
	if !s.opened {
		s.b, s.opened = s.parent.Bucket(s.name), true
	}
	return s.b
}

// Get returns the value of key, nil if absent.
func (s *sub) Get(key []byte) []byte {
	if s.bucket() == nil {
		return nil
	}
	return s.b.Get(key)
}

// Put sets key, creating the list if needed.
func (s *sub) Put(key, value []byte) error {
	if s.bucket() == nil {
		b, err := s.parent.CreateBucket(s.name)
		if err != nil {
			return err
		}
		s.b = b
	}
	return s.b.Put(key, value)
}

// Delete removes key; absent keys and lists are no error.
func (s *sub) Delete(key []byte) error {
	if s.bucket() == nil {
		return nil
	}
	return s.b.Delete(key)
}

// ForEach calls fn for every entry, in key order.
func (s *sub) ForEach(fn func(k, v []byte) error) error {
	if s.bucket() == nil {
		return nil
	}
	return s.b.ForEach(fn)
}

// Cursor returns a cursor over the list, or nil when it does not exist.
func (s *sub) Cursor() *bbolt.Cursor {
	if s.bucket() == nil {
		return nil
	}
	return s.b.Cursor()
}

// kv is a bucket or a sub, for the counters kept in either.
type kv interface {
	Get(key []byte) []byte
	Put(key, value []byte) error
	Delete(key []byte) error
}
