package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// TestCreditDrawAcrossInstances: alice, with 2,000 tokens a day and 3,000
// of prepaid credit, is served by 12 clients over three instances until
// she is refused. The instances draw her credit as their own snapshots
// refuse her (some draw more than needed: each sees the others' draws a
// poll later). Whatever the interleaving: nothing beyond budget + credit
// is admitted, and once the day is settled her balance is exactly the
// credit less what she used beyond the budget — with the script engine
// and with the lease engine.
func TestCreditDrawAcrossInstances(t *testing.T) {
	t.Run("script", func(t *testing.T) { testCreditDraw(t, nil) })
	t.Run("lease", func(t *testing.T) { testCreditDraw(t, leaseEngine) })
}

func testCreditDraw(t *testing.T, engine func(*config.Config)) {
	c := startClusterWith(t, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 2000/day}}
`, time.Second, engine)
	user := "user/" + c.user
	if code, m := call(t, "POST", c.apps[0].url+"/api/v1/admin/credits/"+user+"/topup", c.admin, `{"tokens":3000}`); code != 200 {
		t.Fatalf("top-up: %d %v", code, m)
	}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := c.apps[i%3].url
			for refused := 0; refused < 5; {
				code, m := call(t, "POST", url+"/api/v1/quota/acquire", c.key, `{"tokens":100}`)
				switch code {
				case 200:
					refused = 0
					if code, m := call(t, "POST", url+"/api/v1/quota/settle", c.key, fmt.Sprintf(`{"ticket":%q,"input_tokens":100}`, m["ticket"])); code != 200 {
						t.Errorf("settle: %d %v", code, m)
						return
					}
					admitted.Add(100)
				case 429:
					refused++
					time.Sleep(20 * time.Millisecond)
				default:
					t.Errorf("acquire: %d %v", code, m)
					return
				}
			}
		}()
	}
	wg.Wait()
	used := admitted.Load()
	if used > 5000 {
		t.Fatalf("admitted %d tokens on a budget of 2000 and 3000 of credit", used)
	}
	if used <= 2000 {
		t.Fatalf("admitted %d tokens: the credit was not drawn", used)
	}
	// The day is settled (as the instances do 5 minutes after it ends).
	a := c.apps[1].app
	if _, err := a.credits.SettleDraws(context.Background(), time.Now().Add(48*time.Hour), a.store.WindowUse); err != nil {
		t.Fatal(err)
	}
	_, b := call(t, "GET", c.apps[2].url+"/api/v1/credits?scope="+user, c.admin, "")
	if got, want := int64(b["tokens"].(float64)), 3000-(used-2000); got != want {
		t.Fatalf("balance after settling: %d; want %d (3000 less the %d used beyond the budget of 2000)", got, want, used-2000)
	}
	t.Logf("admitted %d tokens (budget 2000, credit 3000)", used)
}
