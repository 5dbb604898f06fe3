package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/config"
)

// redisCluster is a real three-primary Redis Cluster on loopback ports,
// started by the test and killed when it ends.
type redisCluster struct {
	addrs  []string // host:port of each node, in slot order
	url    string   // the seed URL, in redis.ParseClusterURL form
	client *redis.ClusterClient
}

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRedisCluster starts three redis-server processes in cluster mode,
// gives each a third of the slots, introduces them to each other and waits
// until every node says the cluster is ok.
func startRedisCluster(t *testing.T) *redisCluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed: run ./scripts/test, which installs it")
	}
	ctx := context.Background()
	const n = 3
	rc := &redisCluster{}
	nodes := make([]*redis.Client, n)
	busPorts := make([]int, n)
	for i := range n {
		port, bus := freePort(t), freePort(t)
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("node%d", i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// The bus port is chosen too: port+10000, the default, may be taken.
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", strconv.Itoa(bus),
			"--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		rc.addrs, busPorts[i] = append(rc.addrs, addr), bus
		nodes[i] = redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { nodes[i].Close() })
	}
	for i, c := range nodes {
		eventually(t, patience, fmt.Sprintf("cluster node %d answers", i), func() bool { return c.Ping(ctx).Err() == nil })
	}
	for i, c := range nodes {
		lo, hi := i*16384/n, (i+1)*16384/n-1
		// Distinct epochs, as redis-cli gives them, so that no collision
		// has to be resolved before the slots settle.
		if err := c.Do(ctx, "cluster", "set-config-epoch", i+1).Err(); err != nil {
			t.Fatalf("node %d: cluster set-config-epoch: %v", i, err)
		}
		if err := c.Do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			t.Fatalf("node %d: cluster addslotsrange %d %d: %v", i, lo, hi, err)
		}
	}
	for i := 1; i < n; i++ {
		host, port, _ := net.SplitHostPort(rc.addrs[i])
		if err := nodes[0].Do(ctx, "cluster", "meet", host, port, busPorts[i]).Err(); err != nil {
			t.Fatalf("cluster meet %s: %v", rc.addrs[i], err)
		}
	}
	for i, c := range nodes {
		eventually(t, patience, fmt.Sprintf("cluster node %d sees state ok", i), func() bool {
			info, err := c.ClusterInfo(ctx).Result()
			return err == nil && clusterField(info, "cluster_state") == "ok" && clusterField(info, "cluster_known_nodes") == strconv.Itoa(n)
		})
	}
	rc.url = "redis://" + rc.addrs[0] + "?addr=" + rc.addrs[1] + "&addr=" + rc.addrs[2]
	opts, err := redis.ParseClusterURL(rc.url)
	if err != nil {
		t.Fatal(err)
	}
	rc.client = redis.NewClusterClient(opts)
	t.Cleanup(func() { rc.client.Close() })
	return rc
}

// clusterField returns one field of a CLUSTER INFO reply.
func clusterField(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// masterKeys counts, on each master, the keys whose hash tag starts with
// prefix, by tag.
func (rc *redisCluster) masterKeys(t *testing.T, prefix string) map[string]map[string]int {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	out := map[string]map[string]int{}
	err := rc.client.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		tags := map[string]int{}
		for it := c.Scan(ctx, 0, "{"+prefix+"*", 1000).Iterator(); it.Next(ctx); {
			tag, _, _ := strings.Cut(it.Val(), "}")
			tags[tag+"}"]++
		}
		mu.Lock()
		out[c.Options().Addr] = tags
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRedisClusterHarness: the cluster has three primaries covering every
// slot, and a key written through the cluster client lies on the primary
// that owns its slot, and on no other.
func TestRedisClusterHarness(t *testing.T) {
	rc := startRedisCluster(t)
	ctx := context.Background()
	info, err := rc.client.ClusterInfo(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if got := clusterField(info, "cluster_size"); got != "3" {
		t.Errorf("cluster_size %q, want 3", got)
	}
	if got := clusterField(info, "cluster_slots_ok"); got != "16384" {
		t.Errorf("cluster_slots_ok %q, want 16384", got)
	}
	slots, err := rc.client.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(slots, func(a, b redis.ClusterSlot) int { return a.Start - b.Start })
	owner := map[int]string{} // range start → master address
	next := 0
	for _, s := range slots {
		if s.Start != next {
			t.Fatalf("slots %d to %d have no owner (ranges %v)", next, s.Start-1, slots)
		}
		owner[s.Start] = s.Nodes[0].Addr
		next = s.End + 1
	}
	if next != 16384 {
		t.Fatalf("slots %d to 16383 have no owner (ranges %v)", next, slots)
	}
	ownerOf := func(slot int) string {
		for _, s := range slots {
			if slot >= s.Start && slot <= s.End {
				return owner[s.Start]
			}
		}
		return ""
	}
	written := map[string]int{} // master → keys written there
	for i := range 30 {
		key := fmt.Sprintf("{harness-%d}:k", i)
		if err := rc.client.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		slot, err := rc.client.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := ownerOf(int(slot))
		written[want]++
		err = rc.client.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			n, err := c.Do(ctx, "cluster", "countkeysinslot", slot).Int()
			if err != nil {
				return err
			}
			switch addr := c.Options().Addr; {
			case addr == want && n != 1:
				return fmt.Errorf("%s (slot %d): owner %s holds %d keys in the slot, want 1", key, slot, addr, n)
			case addr != want && n != 0:
				return fmt.Errorf("%s (slot %d): %s, not the owner, holds %d keys in the slot, want 0", key, slot, addr, n)
			case addr == want:
				if v, err := c.Get(ctx, key).Int(); err != nil || v != i {
					return fmt.Errorf("%s on its owner %s: got %d %v, want %d", key, addr, v, err, i)
				}
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	if len(written) != 3 {
		t.Errorf("30 keys landed on %d masters (%v), want all 3", len(written), written)
	}
}

// TestLeaseEngineOnRedisCluster: one instance with quota_engine: lease on
// a three-primary Redis Cluster; two tenants' users spend their budgets
// through the API and their limits hold, the instance never leaves normal
// mode. How the keys spread over the primaries is logged.
func TestLeaseEngineOnRedisCluster(t *testing.T) {
	rc := startRedisCluster(t)
	cfg := testConfig(t)
	cfg.DatabaseURL, cfg.RedisURL, cfg.RedisCluster = freshPostgres(t), rc.url, true
	cfg.QuotaEngine = config.QuotaEngineLease
	cfg.DefaultGlobalRate = "none"
	cfg.RedisTimeout = config.Duration(time.Second)
	cfg.AdminKey = faultAdmin
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the cluster config: %v", err)
	}
	app := start(t, cfg)
	alice := applyPolicy(t, app.url, faultAdmin, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {tokens: 2000/day, concurrency: 2}}
  - name: globex
    projects: [{name: shop}]
    users:
      - {name: bob, projects: [shop], limits: {tokens: 2000/day, concurrency: 2}}
`)
	bobID, bobKey := memberKey(t, app.url, faultAdmin, "bob", "shop")

	// /readyz is read all along the load.
	var notNormal atomic.Int64
	var lastMode atomic.Value
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			code, m, err := get(app.url + "/readyz")
			if err != nil || code != 200 || m["mode"] != "normal" {
				notNormal.Add(1)
				lastMode.Store(fmt.Sprintf("%d %v %v", code, m, err))
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})

	users := []*clusterUser{{name: "alice", id: alice.userID, key: alice.key}, {name: "bob", id: bobID, key: bobKey}}
	var wg sync.WaitGroup
	for _, u := range users {
		for range 4 {
			wg.Go(func() { u.spend(app.url) })
		}
	}
	wg.Wait()
	close(stop)
	watch.Wait()

	for _, u := range users {
		t.Logf("%s: %d admitted, %d tokens settled, %d denied %v, %d answers 503 (retried), most in flight seen %d",
			u.name, u.admitted.Load(), u.settled.Load(), u.denied.Load(), u.deniedBy, u.busy.Load(), u.maxInFlight.Load())
		if u.failed.Load() > 0 {
			t.Errorf("%s: %d calls failed: %v", u.name, u.failed.Load(), u.failures)
		}
		if s := u.settled.Load(); s > 2000 {
			t.Errorf("%s: settled %d tokens, budget 2000", u.name, s)
		}
		if n := u.maxInFlight.Load(); n > 2 {
			t.Errorf("%s: %d tickets in flight at once, limit 2", u.name, n)
		}
		if u.deniedBy["tokens"] == 0 {
			t.Errorf("%s: the budget never ran out in %d acquires (denied %v)", u.name, u.admitted.Load()+u.denied.Load(), u.deniedBy)
		}
		// Spent: a further acquire is refused, and the counters hold
		// exactly what was settled.
		if code, m := call(t, "POST", app.url+"/api/v1/quota/acquire", u.key, `{"tokens":100,"concurrency":true}`); code != 429 {
			t.Errorf("%s: an acquire once the budget is spent: got %d %v, want 429", u.name, code, m)
		}
		if got := userTokensDay(t, app.url, u.key, u.id); got != u.settled.Load() {
			t.Errorf("%s: tokens used %d, want the %d settled", u.name, got, u.settled.Load())
		}
	}
	if n := notNormal.Load(); n > 0 {
		t.Errorf("/readyz was not 200 with mode normal %d times during the load, last: %v", n, lastMode.Load())
	}
	if m := readyz(t, app.url); m["mode"] != "normal" {
		t.Errorf("/readyz after the load: mode %v, want normal", m["mode"])
	}

	// The layout: the global tag and one tag per tenant, each wholly on the
	// primary that owns its slot.
	prefix := config.Default().RedisPrefix
	keys := rc.masterKeys(t, prefix)
	where := map[string][]string{} // tag → the masters holding its keys
	for _, addr := range rc.addrs {
		total := 0
		for tag, n := range keys[addr] {
			total += n
			if tag != "{"+prefix+"}" { // the instances' heartbeats, not the engine's
				where[tag] = append(where[tag], addr)
			}
		}
		t.Logf("master %s holds %d keys: %v", addr, total, keys[addr])
	}
	for _, tenant := range []string{alice.tenantID, tenantOfUser(t, app.url, bobID)} {
		tag := "{" + prefix + ":t:" + tenant + "}"
		if len(where[tag]) != 1 {
			t.Errorf("tenant %s's tag %s is on masters %v, want exactly one", tenant, tag, where[tag])
		}
	}
	if g := "{" + prefix + ":g}"; len(where[g]) != 1 {
		t.Errorf("the global tag is on masters %v, want exactly one", where[g])
	}
	if len(where) != 3 {
		t.Errorf("tags %v, want the global tag and the two tenants'", slices.Sorted(maps.Keys(where)))
	}
}

// tenantOfUser reads a user's tenant through the admin API.
func tenantOfUser(t *testing.T, url, userID string) string {
	t.Helper()
	_, users := call(t, "GET", url+"/api/v1/admin/users", faultAdmin, "")
	for _, u := range users["items"].([]any) {
		if m := u.(map[string]any); m["id"] == userID {
			id, _ := m["tenant_id"].(string)
			return id
		}
	}
	t.Fatalf("no user %s", userID)
	return ""
}

// clusterUser is a member spending its budget, and what it saw.
type clusterUser struct {
	name, id, key string

	admitted, settled, denied, busy, failed atomic.Int64
	inFlight, maxInFlight                   atomic.Int64

	mu       sync.Mutex
	deniedBy map[string]int
	failures []string
}

func (u *clusterUser) fail(what string, code int, m map[string]any, err error) {
	u.failed.Add(1)
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.failures) < 5 {
		u.failures = append(u.failures, fmt.Sprintf("%s: %d %v %v", what, code, m, err))
	}
}

// spend acquires 100 tokens and a slot and settles them, until the budget
// is refused or 40 acquires were answered.
func (u *clusterUser) spend(url string) {
	for range 40 {
		code, m, err := post(context.Background(), url+"/api/v1/quota/acquire", u.key, `{"tokens":100,"concurrency":true}`)
		switch {
		case err != nil || (code != 200 && code != 429 && code != 503):
			u.fail("acquire", code, m, err)
			return
		case code == 503:
			u.busy.Add(1) // retried, as Retry-After says
			time.Sleep(20 * time.Millisecond)
			continue
		case code == 429:
			u.denied.Add(1)
			e, _ := m["error"].(map[string]any)
			dim, _ := e["dimension"].(string)
			u.mu.Lock()
			if u.deniedBy == nil {
				u.deniedBy = map[string]int{}
			}
			u.deniedBy[dim]++
			u.mu.Unlock()
			if dim == "tokens" {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		u.admitted.Add(1)
		n := u.inFlight.Add(1)
		for old := u.maxInFlight.Load(); n > old && !u.maxInFlight.CompareAndSwap(old, n); old = u.maxInFlight.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		u.inFlight.Add(-1)
		body := fmt.Sprintf(`{"ticket":%q,"input_tokens":100}`, m["ticket"])
		for try := 0; ; try++ {
			code, m, err = post(context.Background(), url+"/api/v1/quota/settle", u.key, body)
			if err == nil && code == 503 && try < 50 {
				u.busy.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			break
		}
		if err != nil || code != 200 {
			u.fail("settle", code, m, err)
			return
		}
		u.settled.Add(100)
	}
}

// get fetches url and decodes its JSON answer; a transport error is
// returned as such.
func get(url string) (int, map[string]any, error) {
	resp, err := loadClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	err = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m, err
}

// memberKey gives user a key in project (both found by name through the
// admin API) and returns the user's id and the key.
func memberKey(t *testing.T, url, admin, user, project string) (string, string) {
	t.Helper()
	find := func(path, name string) string {
		_, list := call(t, "GET", url+path, admin, "")
		items, _ := list["items"].([]any)
		for _, it := range items {
			if m := it.(map[string]any); m["name"] == name {
				return m["id"].(string)
			}
		}
		t.Fatalf("no %s named %s in %v", path, name, list)
		return ""
	}
	userID, projectID := find("/api/v1/admin/users", user), find("/api/v1/admin/projects", project)
	code, key := call(t, "POST", url+"/api/v1/admin/keys", admin, `{"user_id":"`+userID+`","project_id":"`+projectID+`"}`)
	if code != 201 {
		t.Fatalf("key for %s: %d %v", user, code, key)
	}
	return userID, key["secret"].(string)
}
