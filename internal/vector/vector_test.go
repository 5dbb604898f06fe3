package vector_test

import (
	"testing"

	"github.com/sluicehq/sluice/internal/vector"
	"github.com/sluicehq/sluice/internal/vector/vectortest"
)

func TestMemory(t *testing.T) {
	vectortest.Run(t, func(t *testing.T, l vector.Limits) vector.Store { return vector.NewMemory(l) })
}

func TestVectorEncoding(t *testing.T) {
	v := []float32{0, 1.5, -2.25, 3e-7}
	got, err := vector.DecodeVector(vector.EncodeVector(v))
	if err != nil || len(got) != len(v) {
		t.Fatalf("got %v, %v", got, err)
	}
	for i := range v {
		if got[i] != v[i] {
			t.Errorf("got %v, want %v", got, v)
		}
	}
	if _, err := vector.DecodeVector("abc"); err == nil {
		t.Error("bad base64: got no error")
	}
}
