package redisquota

import (
	"context"
	"math/big"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// luaClient starts a redis-server of its own (the external test package's
// helpers are not visible here) and returns a client for it.
func luaClient(t *testing.T) *redis.Client {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not on PATH (install it, e.g. apt-get install redis-server): %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: sock, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	for range 200 {
		if c.Ping(context.Background()).Err() == nil {
			return c
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("redis-server on %s did not answer", sock)
	return nil
}

// TestMulDivExact checks the scripts' limb arithmetic against math/big on
// operands across the whole documented range, the fast path and the slow.
func TestMulDivExact(t *testing.T) {
	c := luaClient(t)
	rnd := rand.New(rand.NewPCG(1, 2))
	const two52, two53 = 1 << 52, 1 << 53
	pick := func(max uint64) uint64 {
		switch rnd.IntN(5) {
		case 0:
			return max - rnd.Uint64N(3) // the edges
		case 1:
			return rnd.Uint64N(1 << 20)
		default:
			return rnd.Uint64N(max + 1)
		}
	}
	type tc struct{ a, b, r, c uint64 }
	var cases []tc
	for range 2000 {
		c := max(pick(two52), 1)
		cases = append(cases, tc{pick(two53), pick(two53), rnd.Uint64N(min(c, two52-1)), c})
	}
	// Quotients below 2^53 through the slow path: b at most (2^53-1)·c/a.
	for range 4000 {
		a, c := max(pick(two53), 1), max(pick(two52), 1)
		bmax := new(big.Int).Mul(big.NewInt(two53-1), new(big.Int).SetUint64(c))
		bmax.Quo(bmax, new(big.Int).SetUint64(a))
		if bmax.Cmp(big.NewInt(two53)) > 0 {
			bmax.SetUint64(two53)
		}
		b := rnd.Uint64N(bmax.Uint64() + 1)
		if rnd.IntN(4) == 0 {
			b = bmax.Uint64() // quotients right at the top
		}
		cases = append(cases, tc{a, b, rnd.Uint64N(min(c, two52-1)), c})
	}
	cases = append(cases, tc{two53, two53, two52 - 1, 1}, tc{two53, two53, 0, two52}, tc{1, 1, 0, 1}, tc{0, 5, 3, 7})
	var args []any
	for _, x := range cases {
		args = append(args, x.a, x.b, x.r, x.c)
	}
	src := prelude + `
local out = {}
for i = 1, #ARGV, 4 do
  local q, m = muldiv(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
  out[#out + 1] = string.format('%d %d', q, m)
end
return out`
	res, err := c.Eval(context.Background(), src, nil, args...).StringSlice()
	if err != nil {
		t.Fatalf("EVAL: %v", err)
	}
	for i, x := range cases {
		n := new(big.Int).Mul(new(big.Int).SetUint64(x.a), new(big.Int).SetUint64(x.b))
		n.Add(n, new(big.Int).SetUint64(x.r))
		q, m := new(big.Int).QuoRem(n, new(big.Int).SetUint64(x.c), new(big.Int))
		want := q.String() + " " + m.String()
		if q.Cmp(big.NewInt(two53-16)) >= 0 && res[i] == strconv.Itoa(two53)+" 0" {
			continue // saturated: allowed within 16 of 2^53
		}
		if res[i] != want {
			t.Errorf("muldiv(%d, %d, %d, %d): got %s, want %s", x.a, x.b, x.r, x.c, res[i], want)
		}
	}
}
