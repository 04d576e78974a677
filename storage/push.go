package storage

import (
	"cmp"
	"slices"
)

// PushSubscription is a browser's Web Push subscription (SPEC §7): where
// to post and the keys to encrypt for (RFC 8291), as the browser's
// PushSubscription.toJSON() gives them.
type PushSubscription struct {
	Endpoint string `json:"endpoint"`
	P256dh   string `json:"p256dh"`  // base64url, the browser's P-256 public key
	Auth     string `json:"auth"`    // base64url, 16 bytes
	Created  int64  `json:"created"` // unix ms when first stored
}

// MergePush is how every backend applies PutPush to a handle's list: sub
// replaces the subscription with its endpoint (keeping its Created), and
// beyond limit the oldest go. The list is oldest first.
func MergePush(list []PushSubscription, sub PushSubscription, limit int) []PushSubscription {
	if i := slices.IndexFunc(list, func(p PushSubscription) bool { return p.Endpoint == sub.Endpoint }); i >= 0 {
		sub.Created = list[i].Created
		list = slices.Delete(slices.Clone(list), i, i+1)
	}
	list = append(slices.Clone(list), sub)
	slices.SortStableFunc(list, func(a, b PushSubscription) int { return cmp.Compare(a.Created, b.Created) })
	if limit > 0 && len(list) > limit {
		list = list[len(list)-limit:]
	}
	return list
}

// WithoutPush is list without endpoint's subscription, and whether it had one.
func WithoutPush(list []PushSubscription, endpoint string) ([]PushSubscription, bool) {
	i := slices.IndexFunc(list, func(p PushSubscription) bool { return p.Endpoint == endpoint })
	if i < 0 {
		return list, false
	}
	return slices.Delete(slices.Clone(list), i, i+1), true
}
