package tenancy

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
)

// KeyPrefix starts every Sluice API key, so that leaked keys are easy to
// recognise (secret scanners) and easy to tell from provider keys.
const KeyPrefix = "slk_"

// keyBytes is the key's entropy: 32 random bytes.
const keyBytes = 32

// visiblePrefixLen is how much of a key is stored in clear, to let people tell
// their keys apart: "slk_" and 8 more characters, 48 bits of the secret.
const visiblePrefixLen = len(KeyPrefix) + 8

// MinSecretLen is the shortest secret accepted from an operator
// (SLUICE_ADMIN_KEY): anything shorter is guessable.
const MinSecretLen = 32

// NewSecret returns a fresh API key.
func NewSecret() string {
	var b [keyBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("tenancy: crypto/rand failed: " + err.Error())
	}
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// HashSecret returns the stored form of a key. Keys carry 256 random bits,
// so a fast hash is enough: there is nothing to brute-force.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// VisiblePrefix returns the part of a secret that may be shown and stored.
func VisiblePrefix(secret string) string {
	if len(secret) <= visiblePrefixLen {
		return secret[:min(len(secret), len(KeyPrefix))]
	}
	return secret[:visiblePrefixLen]
}

// checkOperatorSecret validates a key chosen by an operator.
func checkOperatorSecret(field, secret string) error {
	if len(secret) < MinSecretLen {
		return errs.Field(errs.Invalid, field, "%s must be at least %d characters", field, MinSecretLen)
	}
	if strings.TrimSpace(secret) != secret || strings.ContainsAny(secret, " \t\r\n") {
		return errs.Field(errs.Invalid, field, "%s must not contain whitespace", field)
	}
	return nil
}
