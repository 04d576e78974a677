package e2e

import gojcs "github.com/gowebpki/jcs"

func jcs(b []byte) ([]byte, error) { return gojcs.Transform(b) }
