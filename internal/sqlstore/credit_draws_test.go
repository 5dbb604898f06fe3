package sqlstore

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/policy"
)

// TestSettleCreditDraws: settling a window marks all its unsettled draws,
// however many, and answers their sum and least base from the rows it
// marked; a second settling (another instance) marks none; other windows
// are left alone.
func TestSettleCreditDraws(t *testing.T) {
	eachEngine(t, func(t *testing.T, open func(*testing.T) *Store) {
		s := open(t)
		ctx := context.Background()
		at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
		draws := []*policy.CreditDrawRecord{
			{ID: "drw_1", Scope: "user/u1", Dimension: "tokens", Period: "2026-12-04", Amount: 100, BaseLimit: 1000},
			{ID: "drw_2", Scope: "user/u1", Dimension: "tokens", Period: "2026-12-04", Amount: 250, BaseLimit: 900},
			{ID: "drw_3", Scope: "user/u1", Dimension: "tokens", Period: "2026-12-04", Amount: 50, BaseLimit: 1000},
			{ID: "drw_4", Scope: "user/u1", Dimension: "tokens", Period: "2026-12-05", Amount: 70, BaseLimit: 1000},
		}
		err := s.UpdateCreditDraws(ctx, func(tx policy.CreditDrawTx) error {
			for _, d := range draws {
				d.GrantID, d.End, d.CreatedAt = "grt_"+d.ID, at.Add(time.Hour), at
				if err := tx.InsertCreditDraw(d); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		settle := func() (n int, total, base int64) {
			t.Helper()
			if err := s.UpdateCreditDraws(ctx, func(tx policy.CreditDrawTx) (err error) {
				n, total, base, err = tx.SettleCreditDraws("user/u1", "tokens", "2026-12-04", at.Add(2*time.Hour))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return n, total, base
		}
		if n, total, base := settle(); n != 3 || total != 400 || base != 900 {
			t.Fatalf("settle: %d draws, %d drawn, base %d; want 3, 400, 900", n, total, base)
		}
		if n, _, _ := settle(); n != 0 {
			t.Fatalf("settle again: %d draws, want 0", n)
		}
		var due []*policy.CreditDrawRecord
		if err := s.UpdateCreditDraws(ctx, func(tx policy.CreditDrawTx) (err error) {
			due, err = tx.CreditDrawsDue(at.Add(3*time.Hour), 10)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if len(due) != 1 || due[0].ID != "drw_4" {
			t.Fatalf("due after settling one window: %v, want drw_4 alone", due)
		}
	})
}
