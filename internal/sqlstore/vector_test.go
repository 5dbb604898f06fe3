package sqlstore

import (
	"testing"

	"github.com/sluicehq/sluice/internal/vector"
	"github.com/sluicehq/sluice/internal/vector/vectortest"
)

func TestVectors(t *testing.T) {
	for _, e := range []struct {
		name string
		open func(t *testing.T) *Store
	}{{"sqlite", openSQLite}, {"postgres", openPostgres}} {
		t.Run(e.name, func(t *testing.T) {
			vectortest.Run(t, func(t *testing.T, l vector.Limits) vector.Store { return e.open(t).Vectors(l) })
		})
	}
}
