// Package sealed encrypts small secrets at rest (the upstream API keys
// Sluice forwards with on a user's or project's behalf) with a key derived
// from the server's secret: AES-256-GCM, a random nonce per seal, and
// associated data that binds a sealed value to the row it belongs to, so a
// value copied onto another row does not open.
package sealed

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// MinSecret is the shortest server secret accepted, in bytes.
const MinSecret = 32

// version prefixes every sealed value: the format and the derivation.
const version = "v1"

// ErrWrongSecret is returned by Open for a value sealed with another
// server secret (the secret was changed or the database restored beside
// another server's configuration).
var ErrWrongSecret = errors.New("sealed with a different server secret")

// ErrCorrupt is returned by Open for a value that is not one Seal wrote,
// or that was moved to another row (its associated data differs).
var ErrCorrupt = errors.New("sealed value is corrupt or belongs to another record")

// Box seals and opens values with one server secret.
type Box struct {
	aead cipher.AEAD
	kid  string // names the derived key, so a wrong secret is told apart from a corrupt value
}

// New derives the sealing key from secret (at least MinSecret bytes).
func New(secret []byte) (*Box, error) {
	if len(secret) < MinSecret {
		return nil, fmt.Errorf("the server secret is %d bytes, at least %d are needed", len(secret), MinSecret)
	}
	key, err := hkdf.Key(sha256.New, secret, nil, "sluice sealed secrets v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	id := sha256.Sum256(append([]byte("sluice key id\x00"), key...))
	return &Box{aead: aead, kid: base64.RawURLEncoding.EncodeToString(id[:6])}, nil
}

// Seal encrypts plaintext bound to aad. The result is printable:
// "v1.<key id>.<base64 nonce and ciphertext>".
func (b *Box) Seal(plaintext, aad []byte) string {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	out := b.aead.Seal(nonce, nonce, plaintext, aad)
	return version + "." + b.kid + "." + base64.RawStdEncoding.EncodeToString(out)
}

// Open decrypts a value Seal returned for the same aad.
func (b *Box) Open(sealed string, aad []byte) ([]byte, error) {
	v, rest, ok1 := strings.Cut(sealed, ".")
	kid, body, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || v != version {
		return nil, ErrCorrupt
	}
	if kid != b.kid {
		return nil, ErrWrongSecret
	}
	raw, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil || len(raw) < b.aead.NonceSize()+b.aead.Overhead() {
		return nil, ErrCorrupt
	}
	n := b.aead.NonceSize()
	out, err := b.aead.Open(nil, raw[:n], raw[n:], aad)
	if err != nil {
		return nil, ErrCorrupt
	}
	return out, nil
}
