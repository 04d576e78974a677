// Package kez is the KEZ chat protocol (docs/SPEC.md) with no transport and
// no storage: the byte-level formats the server, the Go client and the
// browser client must agree on, each checked against the cross-language
// vectors in the repository's testdata/kez-v1.json and kez-v2.json.
//
//   - Identity (SPEC §1): handles and addresses (ValidHandle, SplitAddress),
//     primaries — "ed25519:<64 lowercase hex>" — and their X25519 form
//     (ParsePrimary, EdwardsToMontgomery, which refuse non-canonical and
//     small-order points).
//   - Request authentication (SPEC §2.0): the signed message of a request
//     bound to one server (Request), its X-KEZ-Auth value (ParseAuth,
//     Request.Verify) and the key a replay cache keeps (OnceKey).
//   - Registration, rotation and deletion (SPEC §2.2, §2.10): signing and
//     verifying their payloads (SignRegistration, VerifyRegistration,
//     SignRotation, VerifyRotation, SignDeletion, VerifyDeletion).
//   - The message envelope (SPEC §3): Keys, Link.Seal and Keys.Open
//     (X25519, HKDF-SHA256, AES-256-GCM, an Ed25519 signature by the sender);
//     the server reads only the header (ReadEnvelopeHeader).
//   - Strict JSON (SPEC §2): exact member sets, no duplicates, no case
//     variants (CheckStrictJSON, ExactMembers).
//   - The binding log (SPEC §5): checkpoints, inclusion and consistency
//     proofs checked under a pinned log key (ParseLogKey, Checkpoint).
//   - Trust between contacts (SPEC §6): safety numbers (SafetyNumber).
//
// Errors meant for a client carry a SPEC §2.11 code (*Error, Errorf).
// The server's HTTP handlers are in package handlers, the client in package
// client; the Caddy plugin is the module's root package.
package kez
