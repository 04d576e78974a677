package kez

import (
	"crypto/ed25519"

	"github.com/gowebpki/jcs"
)

func jcsTransform(b []byte) ([]byte, error)          { return jcs.Transform(b) }
func edSign(k ed25519.PrivateKey, msg []byte) []byte { return ed25519.Sign(k, msg) }
