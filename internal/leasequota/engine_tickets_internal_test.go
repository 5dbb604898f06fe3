package leasequota

import (
	"slices"
	"testing"
)

// TestIDTags: a ticket id names the hash tags of its records, whatever
// the tenant's name, and ids of other kinds name none.
func TestIDTags(t *testing.T) {
	for _, tags := range [][]string{{""}, {"", "ten_01abc"}, {"acme-co"}, {"", "with.dot/and space"}, {"ünï"}} {
		id := "tkt_abc" + idTags(tags)
		got, ok := parseTags(id)
		if !ok || !slices.Equal(got, tags) {
			t.Errorf("parseTags(%q) = %q, %v; want %q", id, got, ok, tags)
		}
	}
	for _, id := range []string{"tkt_abc", "abc.g", "tkt_abc.", "tkt_abc.q", "tkt_abc.xzz", "tkt_abc.t"} {
		if got, ok := parseTags(id); ok {
			t.Errorf("parseTags(%q) = %q; want none", id, got)
		}
	}
}
