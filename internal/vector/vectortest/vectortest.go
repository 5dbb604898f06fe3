// Package vectortest is one suite of tests every vector.Store passes: the
// in-memory store and the SQL store (SQLite and PostgreSQL) alike.
package vectortest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/vector"
)

// New makes an empty store with the given limits.
type New func(t *testing.T, l vector.Limits) vector.Store

func doc(text string, v ...float32) vector.Doc {
	meta, _ := json.Marshal([][2]string{{"source", text}})
	return vector.Doc{Text: text, Meta: meta, Vector: v}
}

// Run runs the suite.
func Run(t *testing.T, newStore New) {
	ctx := context.Background()
	t.Run("Ranking", func(t *testing.T) {
		s := newStore(t, vector.Limits{})
		k := vector.Key{TenantID: "t1", ProjectID: "p1", Collection: "docs"}
		n, err := s.Add(ctx, k, "m", []vector.Doc{doc("east", 1, 0, 0), doc("north", 0, 1, 0), doc("north-east", 1, 1, 0), doc("up", 0, 0, 1)}, vector.AddOptions{})
		if err != nil || n != 4 {
			t.Fatalf("add: got %d, %v, want 4", n, err)
		}
		hits, err := s.Search(ctx, k, []float32{0.9, 0.2, 0}, 3)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, h := range hits {
			got = append(got, h.Text)
		}
		if len(got) != 3 || got[0] != "east" || got[1] != "north-east" || got[2] != "north" {
			t.Errorf("got %v, want [east north-east north]", got)
		}
		if hits[0].Score < hits[1].Score || hits[0].Score > 1.0000001 {
			t.Errorf("got scores %v, %v: want descending cosines", hits[0].Score, hits[1].Score)
		}
		var meta [][2]string
		if err := json.Unmarshal(hits[0].Meta, &meta); err != nil || meta[0][1] != "east" {
			t.Errorf("got meta %s, want the document's own", hits[0].Meta)
		}
		info, _ := s.Info(ctx, k)
		if info != (vector.Info{Model: "m", Dimensions: 3, Count: 4}) {
			t.Errorf("got info %+v", info)
		}
	})
	t.Run("Scoping", func(t *testing.T) {
		s := newStore(t, vector.Limits{})
		a := vector.Key{TenantID: "t1", ProjectID: "p1", Collection: "docs"}
		others := []vector.Key{
			{TenantID: "t2", ProjectID: "p1", Collection: "docs"},
			{TenantID: "t1", ProjectID: "p2", Collection: "docs"},
			{TenantID: "t1", ProjectID: "p1", Collection: "other"},
		}
		if _, err := s.Add(ctx, a, "m", []vector.Doc{doc("secret of t1/p1", 1, 0)}, vector.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, o := range others {
			hits, err := s.Search(ctx, o, []float32{1, 0}, 5)
			if err != nil || len(hits) != 0 {
				t.Errorf("%+v: got %d hits, %v: want none", o, len(hits), err)
			}
			if info, _ := s.Info(ctx, o); info.Count != 0 {
				t.Errorf("%+v: got count %d, want 0", o, info.Count)
			}
		}
		// Another tenant's collection of the same name is its own (another model, other dimensions).
		if _, err := s.Add(ctx, others[0], "other-model", []vector.Doc{doc("t2", 0, 0, 1)}, vector.AddOptions{}); err != nil {
			t.Errorf("a same-named collection of another tenant: %v", err)
		}
		if hits, _ := s.Search(ctx, a, []float32{1, 0}, 5); len(hits) != 1 || hits[0].Text != "secret of t1/p1" {
			t.Errorf("got %v, want only t1/p1's document", hits)
		}
	})
	t.Run("Bounds", func(t *testing.T) {
		s := newStore(t, vector.Limits{MaxPerCollection: 3, MaxCollections: 2, MaxDimensions: 4})
		k := vector.Key{TenantID: "t", ProjectID: "p", Collection: "c"}
		if _, err := s.Add(ctx, k, "m", []vector.Doc{doc("a", 1, 0), doc("b", 0, 1)}, vector.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := s.Add(ctx, k, "m", []vector.Doc{doc("c", 1, 1), doc("d", 1, 2)}, vector.AddOptions{})
		if !errors.Is(err, vector.ErrFull) || errs.CodeOf(err) != errs.Unprocessable {
			t.Errorf("over max_per_collection: got %v, want ErrFull (unprocessable)", err)
		}
		if info, _ := s.Info(ctx, k); info.Count != 2 {
			t.Errorf("a refused add kept %d documents, want 2 (all or none)", info.Count)
		}
		if _, err := s.Add(ctx, k, "m", []vector.Doc{doc("e", 1, 0, 0)}, vector.AddOptions{}); !errors.Is(err, vector.ErrMismatch) {
			t.Errorf("other dimensions: got %v, want ErrMismatch", err)
		}
		if _, err := s.Add(ctx, k, "m2", []vector.Doc{doc("e", 1, 0)}, vector.AddOptions{}); !errors.Is(err, vector.ErrMismatch) {
			t.Errorf("other model: got %v, want ErrMismatch", err)
		}
		if _, err := s.Search(ctx, k, []float32{1, 0, 0}, 1); !errors.Is(err, vector.ErrMismatch) {
			t.Errorf("query of other dimensions: got %v, want ErrMismatch", err)
		}
		if _, err := s.Add(ctx, vector.Key{TenantID: "t", ProjectID: "p", Collection: "wide"}, "m", []vector.Doc{doc("w", 1, 2, 3, 4, 5)}, vector.AddOptions{}); !errors.Is(err, vector.ErrMismatch) {
			t.Errorf("over max_dimensions: got %v, want a refusal", err)
		}
		if _, err := s.Add(ctx, vector.Key{TenantID: "t", ProjectID: "p", Collection: "c2"}, "m", []vector.Doc{doc("x", 1)}, vector.AddOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Add(ctx, vector.Key{TenantID: "t", ProjectID: "p", Collection: "c3"}, "m", []vector.Doc{doc("x", 1)}, vector.AddOptions{}); !errors.Is(err, vector.ErrFull) {
			t.Errorf("over max_collections: got %v, want ErrFull", err)
		}
		if _, err := s.Add(ctx, vector.Key{TenantID: "t", ProjectID: "other", Collection: "c3"}, "m", []vector.Doc{doc("x", 1)}, vector.AddOptions{}); err != nil {
			t.Errorf("another project has its own collection bound: %v", err)
		}
	})
	t.Run("DuplicatesAndReplace", func(t *testing.T) {
		s := newStore(t, vector.Limits{})
		k := vector.Key{TenantID: "t", ProjectID: "p", Collection: "c"}
		skip := vector.AddOptions{SkipDuplicates: true}
		if n, err := s.Add(ctx, k, "m", []vector.Doc{doc("a", 1, 0), doc("a", 1, 0), doc("b", 0, 1)}, skip); err != nil || n != 2 {
			t.Fatalf("got %d, %v, want 2 added (one duplicate in the batch)", n, err)
		}
		if n, err := s.Add(ctx, k, "m", []vector.Doc{doc("a", 1, 0), doc("c", 1, 1)}, skip); err != nil || n != 1 {
			t.Errorf("got %d, %v, want 1 added (a is stored)", n, err)
		}
		if n, _ := s.Add(ctx, k, "m", []vector.Doc{doc("a", 1, 0)}, vector.AddOptions{}); n != 1 {
			t.Errorf("duplicates allowed: got %d added, want 1", n)
		}
		if n, err := s.Add(ctx, k, "m2", []vector.Doc{doc("z", 0, 0, 1)}, vector.AddOptions{Replace: true}); err != nil || n != 1 {
			t.Fatalf("replace: got %d, %v", n, err)
		}
		if info, _ := s.Info(ctx, k); info != (vector.Info{Model: "m2", Dimensions: 3, Count: 1}) {
			t.Errorf("after replace: got %+v, want only the new document", info)
		}
	})
}
