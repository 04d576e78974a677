package kez

import (
	"strings"
	"testing"
	"time"

	v2vectors "github.com/kezchat/kez/internal/vectors"
)

type changeVectors = v2vectors.V2

func loadChangeVectors(t testing.TB) *changeVectors { return v2vectors.LoadV2(t) }

func TestRotationAndDeletionVectors(t *testing.T) {
	v := loadChangeVectors(t)
	alice, aliceNew := NewKeysOrFail(t, v.Keys["alice"].Seed), NewKeysOrFail(t, v.Keys["alice_new"].Seed)

	rot, err := SignRotation(alice.Private(), aliceNew.Private(), "alice", v.Server, time.Unix(v.Rotation.TS, 0))
	if err != nil || string(rot.Payload) != v.Rotation.SignedBytes || string(rot.JCS()) != v.Rotation.LeafDataJCS {
		t.Fatalf("SignRotation = %s, %v", rot.JCS(), err)
	}
	pol := ChangePolicy{Server: v.Server, Now: time.Unix(v.Rotation.TS+60, 0), Skew: 5 * time.Minute}
	got, p, err := VerifyRotation(v.Rotation.Body, pol)
	if err != nil || string(got.JCS()) != v.Rotation.LeafDataJCS || p.Old != v.Keys["alice"].Primary || p.New != v.Keys["alice_new"].Primary {
		t.Fatalf("VerifyRotation: %v", err)
	}
	if string(got.JCS()) != v.Log.Leaves[2].DataJCS {
		t.Fatal("the rotation's leaf differs from the log vector's leaf 2")
	}

	del, err := SignDeletion(aliceNew.Private(), "alice", v.Server, time.Unix(v.Deletion.TS, 0))
	if err != nil || string(del.JCS()) != v.Deletion.LeafDataJCS {
		t.Fatalf("SignDeletion = %s, %v", del.JCS(), err)
	}
	dpol := ChangePolicy{Server: v.Server, Now: time.Unix(v.Deletion.TS, 0), Skew: 5 * time.Minute}
	gotDel, dp, err := VerifyDeletion(v.Deletion.Body, dpol)
	if err != nil || string(gotDel.JCS()) != v.Deletion.LeafDataJCS || dp.Primary != v.Keys["alice_new"].Primary {
		t.Fatalf("VerifyDeletion: %v", err)
	}
	// With no server policy (a client reading the log) only the content counts.
	if _, _, err := VerifyRotation(v.Rotation.Body, ChangePolicy{}); err != nil {
		t.Fatalf("VerifyRotation without a server: %v", err)
	}
}

func TestRotationRefusals(t *testing.T) {
	v := loadChangeVectors(t)
	body := string(v.Rotation.Body)
	pol := ChangePolicy{Server: v.Server, Now: time.Unix(v.Rotation.TS, 0), Skew: 5 * time.Minute}
	alice, aliceNew := NewKeysOrFail(t, v.Keys["alice"].Seed), NewKeysOrFail(t, v.Keys["alice_new"].Seed)
	onlyOld, _ := SignRotation(alice.Private(), aliceNew.Private(), "alice", v.Server, time.Unix(v.Rotation.TS, 0))
	onlyOld.New = onlyOld.Old // the new key did not sign
	same, _ := SignRotation(alice.Private(), alice.Private(), "alice", v.Server, time.Unix(v.Rotation.TS, 0))
	cases := map[string]struct {
		body string
		pol  ChangePolicy
		code string
	}{
		"other server":     {body, ChangePolicy{Server: "other.example", Now: pol.Now, Skew: pol.Skew}, CodeWrongServer},
		"stale":            {body, ChangePolicy{Server: v.Server, Now: pol.Now.Add(time.Hour), Skew: pol.Skew}, CodeStaleTimestamp},
		"new did not sign": {string(onlyOld.JCS()), pol, CodeBadSignature},
		"same key":         {string(same.JCS()), pol, CodeBadRequest},
		"case variant":     {strings.Replace(body, `"signatures"`, `"Signatures"`, 1), pol, CodeBadRequest},
		"extra member":     {strings.Replace(body, `"payload"`, `"x": 1, "payload"`, 1), pol, CodeBadRequest},
		"alg":              {strings.Replace(body, `"ed25519"`, `"rsa"`, 1), pol, CodeUnsupportedAlg},
		"v1":               {strings.Replace(body, `"v": 2`, `"v": 1`, 1), pol, CodeBadRequest},
	}
	for name, c := range cases {
		if _, _, err := VerifyRotation([]byte(c.body), c.pol); codeOf(err) != c.code {
			t.Errorf("%s: %v, want %s", name, err, c.code)
		}
	}
	dbody := string(v.Deletion.Body)
	dpol := ChangePolicy{Server: v.Server, Now: time.Unix(v.Deletion.TS, 0), Skew: 5 * time.Minute}
	other, _ := SignDeletion(alice.Private(), "alice", v.Server, time.Unix(v.Deletion.TS, 0))
	other.Signature = onlyOld.New // another key's signature
	for name, b := range map[string]string{
		"tampered handle": strings.Replace(dbody, `"handle": "alice"`, `"handle": "alice2"`, 1),
		"foreign sig":     string(other.JCS()),
	} {
		if _, _, err := VerifyDeletion([]byte(b), dpol); codeOf(err) != CodeBadSignature {
			t.Errorf("deletion %s: %v", name, err)
		}
	}
}
