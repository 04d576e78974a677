package handlers

import "github.com/kezchat/kez/storage"

func struct2msg(seq uint64, at int64, env string) storage.Message {
	return storage.Message{Seq: seq, ReceivedAt: at, Envelope: []byte(env)}
}
