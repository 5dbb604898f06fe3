package sealed

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestRoundTrip(t *testing.T) {
	b, err := New(secret)
	if err != nil {
		t.Fatal(err)
	}
	s := b.Seal([]byte("lf-key-ABCDEF"), []byte("row 1"))
	if strings.Contains(s, "lf-key") || strings.Contains(s, "ABCDEF") {
		t.Fatalf("sealed value shows the plaintext: %s", s)
	}
	got, err := b.Open(s, []byte("row 1"))
	if err != nil || !bytes.Equal(got, []byte("lf-key-ABCDEF")) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if s2 := b.Seal([]byte("lf-key-ABCDEF"), []byte("row 1")); s2 == s {
		t.Error("two seals of one value are equal: the nonce is not fresh")
	}
}

func TestOpenRefuses(t *testing.T) {
	b, _ := New(secret)
	other, _ := New([]byte("another secret of at least 32 bytes!"))
	s := b.Seal([]byte("k"), []byte("row 1"))
	if _, err := b.Open(s, []byte("row 2")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("opened on another row: %v, want ErrCorrupt", err)
	}
	if _, err := other.Open(s, []byte("row 1")); !errors.Is(err, ErrWrongSecret) {
		t.Errorf("opened with another secret: %v, want ErrWrongSecret", err)
	}
	flipped := []byte(s)
	flipped[len(flipped)-3] ^= 1
	if _, err := b.Open(string(flipped), []byte("row 1")); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tampered value opened: %v, want ErrCorrupt", err)
	}
	for _, bad := range []string{"", "v1", "v2.x.y", "v1." + strings.Split(s, ".")[1] + ".!!"} {
		if _, err := b.Open(bad, nil); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	if _, err := New([]byte("short")); err == nil {
		t.Error("a 5-byte secret was accepted")
	}
}
