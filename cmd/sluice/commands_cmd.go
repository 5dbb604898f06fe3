package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// groupSummaries say what each group of commands is about.
var groupSummaries = map[string]string{
	"tenants":     "the organisations on the platform",
	"departments": "departments of a tenant (nestable)",
	"projects":    "projects, where work runs",
	"users":       "people and service accounts",
	"keys":        "API keys (the secret is shown once)",
	"memberships": "who works in which project",
	"audit":       "the audit log",
	"plans":       "named sets of limits",
	"limits":      "a scope's plan and limits",
	"grants":      "temporary raises of a scope's limits",
	"flows":       "LangFlow flows on the server",
	"runs":        "runs of flows",
	"usage":       "use, limits and what remains",
	"requests":    "ask for more quota, decide asks",

	"platform":       "the platform's settings: read-only mode, reserved share",
	"upstream-keys":  "the keys Sluice forwards with to the LangFlow it fronts",
	"alerts":         "threshold alerts: a tenant's webhook and the delivery log",
	"alerts webhook": "a tenant's alert webhook (its secret is shown once, when generated)",
	"credits":        "prepaid credit: balances, top-ups, redeeming codes",
	"credit-codes":   "single-use redeem codes (shown once)",
	"files":          "a project's files, for its flows",
}

// Flags several commands share.
var (
	fTenant  = flagSpec{"tenant", "NAME", "the tenant, by name or id"}
	fUser    = flagSpec{"user", "NAME", "the user, by name or id (looked up within --tenant)"}
	fProject = flagSpec{"project", "NAME", "the project, by name or id (looked up within --tenant)"}
	fLimit   = flagSpec{"limit", "N", "at most N items (1–1000, default 100)"}
	fAfter   = flagSpec{"after", "ID", "the page after this id (the last answer's next)"}
	fLimits  = flagSpec{"limits", "JSON", `limits as JSON, such as '{"requests":"10/min","tokens":"100000/day"}' (docs/quota.md)`}
)

const scopeAbout = `SCOPE is global, tenant/NAME, department/NAME, project/NAME, user/NAME, key/NAME or
membership/USER@PROJECT. Names are looked up within --tenant when given; ids work too.`

// commands is every client command, built once.
var commands = sync.OnceValue(func() []*command {
	var cs []*command
	add := func(c *command) { cs = append(cs, c) }

	add(&command{path: []string{"whoami"}, summary: "who the API key belongs to", examples: []string{"sluice whoami"},
		run: func(x *invocation) error { return x.show(http.MethodGet, "/api/v1/me", nil, nil) }})

	tenancyCommands(add)
	keyCommands(add)
	policyCommands(add)
	flowCommands(add)
	usageCommands(add)
	platformCommands(add)
	alertCommands(add)
	creditCommands(add)
	fileCommands(add)

	add(&command{path: []string{"apply"}, summary: "create or update plans, the tree and limits from a policy file",
		flags: []flagSpec{{"f", "FILE", "the policy file (YAML or JSON); - reads standard input"}, {"dry-run", "", "say what would change, change nothing"},
			{"what-if", "WINDOW", "replay the ledger's last WINDOW (7d, 24h; at most 90d) against the file and report what it would have denied, clamped or queued; apply nothing"},
			{"tenant", "NAME", "with --what-if: the tenant whose ledger is replayed (platform admins; default all)"}},
		examples: []string{"sluice apply -f policy.yaml --dry-run", "sluice apply -f policy.yaml", "sluice apply -f draft.yaml --what-if 7d", "sluice apply -f draft.yaml --what-if 24h -o json"},
		run: func(x *invocation) error {
			if _, ok := x.flags["what_if"]; ok && x.outputFlag != "" {
				x.flags["o"] = x.outputFlag // the report's own table or JSON
			}
			return apply(x.ctx, x.c, x.flags, x.stdout, x.stderr)
		}})
	add(&command{path: []string{"export"}, summary: "print the current policy as a policy file",
		flags:    []flagSpec{{"format", "F", "yaml (default) or json"}},
		examples: []string{"sluice export > policy.yaml", "sluice export --format json"},
		run: func(x *invocation) error {
			format := x.flags["format"]
			if format == "" {
				format = "yaml"
			}
			var raw json.RawMessage
			if err := x.c.Do(x.ctx, http.MethodGet, "/api/v1/admin/policy", url.Values{"format": {format}}, nil, &raw); err != nil {
				return err
			}
			_, err := x.stdout.Write(raw)
			return err
		}})
	return cs
})

// tenancyResource describes tenants, departments, projects and users for
// their five verbs.
type tenancyResource struct {
	group, kind, path string
	create, update    []flagSpec
	filters           []flagSpec
	example           string // create's flags in the examples
	sample            string // a name in the examples
}

func tenancyCommands(add func(*command)) {
	fName := flagSpec{"name", "NAME", "1–63 letters, digits, - _ . (unique in its parent)"}
	fDisplay := flagSpec{"display-name", "TEXT", "the name people read"}
	fDept := flagSpec{"department", "NAME", "the department, by name or id (empty: the tenant's root)"}
	fParent := flagSpec{"parent", "NAME", "the parent department, by name or id (empty: the tenant's root)"}
	fRoot := flagSpec{"root", "true", "only those directly under the tenant"}
	for _, r := range []tenancyResource{
		{group: "tenants", kind: "tenant", path: "/api/v1/admin/tenants", sample: "university",
			create:  []flagSpec{fName, fDisplay, {"timezone", "ZONE", "IANA time zone of daily and monthly windows (default UTC)"}},
			example: "--name university --timezone Asia/Shanghai"},
		{group: "departments", kind: "department", path: "/api/v1/admin/departments", sample: "cs101",
			create:  []flagSpec{fTenant, fParent, fName, fDisplay},
			filters: []flagSpec{fTenant, fParent, fRoot}, example: "--tenant university --name cs101"},
		{group: "projects", kind: "project", path: "/api/v1/admin/projects", sample: "group-1",
			create:  []flagSpec{fTenant, fDept, fName, fDisplay},
			filters: []flagSpec{fTenant, fDept, fRoot}, example: "--tenant university --department cs101 --name group-1"},
		{group: "users", kind: "user", path: "/api/v1/admin/users", sample: "alice",
			create: []flagSpec{fTenant, fName, fDisplay, {"email", "ADDRESS", "e-mail address"},
				{"role", "ROLE", "member (default), tenant_admin or platform_admin"}},
			filters: []flagSpec{fTenant, fProject, fRoot}, example: "--tenant university --name alice --email alice@example.edu"},
	} {
		r := r
		// A name is looked up within --tenant; tenants have none above them.
		scoped := []flagSpec{}
		inTenant := ""
		if r.kind != "tenant" {
			scoped = []flagSpec{fTenant}
			inTenant = " --tenant university"
		}
		one := func(x *invocation) (string, error) {
			id, err := x.names.id(r.kind, x.tenantScope(), x.args[0], "")
			return r.path + "/" + url.PathEscape(id), err
		}
		upper := strings.ToUpper(r.kind)
		add(&command{path: []string{r.group, "list"}, summary: "list " + r.group, nargs: 0,
			flags:    append(append([]flagSpec{}, r.filters...), fLimit, fAfter),
			examples: []string{"sluice " + r.group + " list" + inTenant, "sluice " + r.group + " list -o json"},
			run: func(x *invocation) error {
				return x.show(http.MethodGet, r.path, query(x.flags), nil)
			}})
		add(&command{path: []string{r.group, "get"}, args: upper, nargs: 1, summary: "show a " + r.kind + ", by name or id", flags: scoped,
			examples: []string{"sluice " + r.group + " get " + r.sample + inTenant},
			run: func(x *invocation) error {
				p, err := one(x)
				if err != nil {
					return err
				}
				return x.show(http.MethodGet, p, nil, nil)
			}})
		add(&command{path: []string{r.group, "create"}, aliases: []string{"add"}, nargs: 0, summary: "create a " + r.kind, flags: r.create,
			examples: []string{"sluice " + r.group + " create " + r.example},
			run: func(x *invocation) error {
				return x.show(http.MethodPost, r.path, nil, body(x.flags))
			}})
		update := []flagSpec{}
		for _, f := range r.create {
			if f.name != "tenant" {
				update = append(update, f)
			}
		}
		add(&command{path: []string{r.group, "update"}, args: upper, nargs: 1, summary: "change a " + r.kind + " (only the fields given)",
			flags: append(scoped, update...), examples: []string{"sluice " + r.group + " update " + r.sample + inTenant + " --display-name \"…\""},
			run: func(x *invocation) error {
				p, err := one(x)
				if err != nil {
					return err
				}
				b := body(x.flags)
				delete(b, "tenant_id") // it only narrowed the name
				return x.show(http.MethodPatch, p, nil, b)
			}})
		add(&command{path: []string{r.group, "delete"}, aliases: []string{"revoke"}, args: upper, nargs: 1, summary: "delete a " + r.kind, flags: scoped,
			examples: []string{"sluice " + r.group + " delete " + r.sample + inTenant},
			run: func(x *invocation) error {
				p, err := one(x)
				if err != nil {
					return err
				}
				if err := x.show(http.MethodDelete, p, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(x.stderr, "%s %s: deleted\n", r.kind, x.args[0])
				return nil
			}})
	}

	mpath := "/api/v1/admin/memberships"
	add(&command{path: []string{"memberships", "list"}, nargs: 0, summary: "list memberships", flags: []flagSpec{fTenant, fUser, fProject, fLimit, fAfter},
		examples: []string{"sluice memberships list --tenant university --project group-1"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, mpath, query(x.flags), nil) }})
	add(&command{path: []string{"memberships", "add"}, aliases: []string{"create"}, nargs: 0, summary: "let a user work in a project",
		flags: []flagSpec{fTenant, fUser, fProject}, examples: []string{"sluice memberships add --tenant university --user alice --project group-1"},
		run: func(x *invocation) error {
			if err := need(x, "user_id", "project_id"); err != nil {
				return err
			}
			return x.show(http.MethodPost, mpath, nil, map[string]any{"user_id": x.flags["user_id"], "project_id": x.flags["project_id"]})
		}})
	add(&command{path: []string{"memberships", "remove"}, aliases: []string{"delete", "revoke"}, nargs: 0, summary: "take a user out of a project",
		flags: []flagSpec{fTenant, fUser, fProject}, examples: []string{"sluice memberships remove --tenant university --user alice --project group-1"},
		run: func(x *invocation) error {
			if err := need(x, "user_id", "project_id"); err != nil {
				return err
			}
			if err := x.show(http.MethodDelete, mpath+"/"+url.PathEscape(x.flags["user_id"])+"/"+url.PathEscape(x.flags["project_id"]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintln(x.stderr, "membership removed")
			return nil
		}})
	add(&command{path: []string{"audit", "list"}, nargs: 0, summary: "the audit log, newest first", flags: []flagSpec{fTenant, fLimit, fAfter},
		examples: []string{"sluice audit list --tenant university --limit 20"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, "/api/v1/admin/audit", query(x.flags), nil) }})
}

func keyCommands(add func(*command)) {
	const path = "/api/v1/admin/keys"
	one := func(x *invocation) (string, error) {
		id, err := x.names.id("key", x.tenantScope(), x.args[0], "")
		return path + "/" + url.PathEscape(id), err
	}
	fExpIn := flagSpec{"expires-in", "DURATION", "expire after this long: 720h, 30d"}
	fExpAt := flagSpec{"expires-at", "TIME", "expire at this time (RFC 3339: 2026-12-31T00:00:00Z)"}
	add(&command{path: []string{"keys", "list"}, nargs: 0, summary: "list keys (never their secrets)", flags: []flagSpec{fTenant, fUser, fProject, fLimit, fAfter},
		examples: []string{"sluice keys list --tenant university --user alice"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, path, query(x.flags), nil) }})
	add(&command{path: []string{"keys", "get"}, args: "KEY", nargs: 1, summary: "show a key, by id (or name)", flags: []flagSpec{fTenant},
		examples: []string{"sluice keys get key_01…"},
		run: func(x *invocation) error {
			p, err := one(x)
			if err != nil {
				return err
			}
			return x.show(http.MethodGet, p, nil, nil)
		}})
	add(&command{path: []string{"keys", "create"}, nargs: 0, summary: "create an API key; its secret is printed this once",
		about: "Without --user the key is yours. --plan and --limits give the key's own scope (key/ID) limits, in the same step.",
		flags: []flagSpec{fTenant, fUser, {"project", "NAME", "the key's default project, by name or id"}, {"name", "NAME", "a name for the key"},
			fExpIn, fExpAt, {"plan", "NAME", "the key's plan"}, fLimits},
		examples: []string{"sluice keys create --tenant university --user alice --project group-1 --name laptop --expires-in 30d",
			`sluice keys create --name ci --expires-in 720h --limits '{"requests":"10/min","models":["gpt-4o-mini"]}'`},
		run: func(x *invocation) error {
			b := body(x.flags)
			delete(b, "tenant_id")
			return x.show(http.MethodPost, path, nil, b)
		}})
	add(&command{path: []string{"keys", "update"}, args: "KEY", nargs: 1, summary: "rename a key, change its project or expiry",
		about:    "A key's limits are its scope's: sluice limits set key/ID --limits JSON.",
		flags:    []flagSpec{fTenant, {"name", "NAME", "a new name"}, {"project", "NAME", "a new default project"}, fExpIn, fExpAt},
		examples: []string{"sluice keys update key_01… --name laptop-2"},
		run: func(x *invocation) error {
			p, err := one(x)
			if err != nil {
				return err
			}
			b := body(x.flags)
			delete(b, "tenant_id")
			return x.show(http.MethodPatch, p, nil, b)
		}})
	add(&command{path: []string{"keys", "expire"}, args: "KEY", nargs: 1, summary: "set when a key stops working",
		flags:    []flagSpec{fTenant, {"in", "DURATION", "from now: 24h, 7d"}, {"at", "TIME", "at this time (RFC 3339)"}},
		examples: []string{"sluice keys expire key_01… --in 24h", "sluice keys expire key_01… --at 2026-12-31T00:00:00Z"},
		run: func(x *invocation) error {
			in, at := x.flags["in"], x.flags["at"]
			if (in == "") == (at == "") {
				return usageError("keys expire needs --in DURATION or --at TIME (one of them); to stop a key now, sluice keys revoke")
			}
			p, err := one(x)
			if err != nil {
				return err
			}
			b := map[string]any{}
			if in != "" {
				b["expires_in"] = in
			} else {
				b["expires_at"] = at
			}
			return x.show(http.MethodPatch, p, nil, b)
		}})
	add(&command{path: []string{"keys", "revoke"}, aliases: []string{"delete"}, args: "KEY", nargs: 1, summary: "revoke a key at once (the record stays)",
		flags: []flagSpec{fTenant}, examples: []string{"sluice keys revoke key_01…"},
		run: func(x *invocation) error {
			p, err := one(x)
			if err != nil {
				return err
			}
			if err := x.show(http.MethodDelete, p, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stderr, "key %s: revoked\n", x.args[0])
			return nil
		}})
}

func policyCommands(add func(*command)) {
	// Limits.
	const lpath = "/api/v1/admin/limits"
	scopePath := func(x *invocation) (string, string, error) {
		s, err := x.names.scope(x.tenantScope(), x.args[0], "")
		if err != nil {
			return "", "", err
		}
		parts := strings.Split(s, "/")
		for i, p := range parts {
			parts[i] = url.PathEscape(p)
		}
		return lpath + "/" + strings.Join(parts, "/"), s, nil
	}
	add(&command{path: []string{"limits", "list"}, nargs: 0, summary: "list the scopes with settings", flags: []flagSpec{fTenant},
		examples: []string{"sluice limits list --tenant university"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, lpath, query(x.flags), nil) }})
	add(&command{path: []string{"limits", "get"}, args: "SCOPE", nargs: 1, summary: "a scope's settings, effective limits and grants", about: scopeAbout,
		flags:    []flagSpec{fTenant},
		examples: []string{"sluice limits get project/group-1 --tenant university", "sluice limits get user/alice --tenant university -o json"},
		run: func(x *invocation) error {
			p, _, err := scopePath(x)
			if err != nil {
				return err
			}
			return x.show(http.MethodGet, p, nil, nil)
		}})
	add(&command{path: []string{"limits", "set"}, args: "SCOPE", nargs: 1, summary: "set a scope's plan and limits (live, no restart)",
		about: scopeAbout + "\nThe settings given replace the scope's settings.",
		flags: []flagSpec{fTenant, {"plan", "NAME", "the scope's plan"}, fLimits,
			{"guaranteed", "JSON", "the share of the parent's limits kept for this department or project"}},
		examples: []string{`sluice limits set project/group-1 --tenant university --plan pro --limits '{"tokens":"1000000/month"}'`,
			`sluice limits set key/key_01… --limits '{"requests":"1/min"}'`},
		run: func(x *invocation) error {
			p, _, err := scopePath(x)
			if err != nil {
				return err
			}
			b := body(x.flags)
			delete(b, "tenant_id")
			return x.show(http.MethodPut, p, nil, b)
		}})
	add(&command{path: []string{"limits", "delete"}, aliases: []string{"clear"}, args: "SCOPE", nargs: 1, summary: "clear a scope's settings", about: scopeAbout,
		flags: []flagSpec{fTenant}, examples: []string{"sluice limits delete user/alice --tenant university"},
		run: func(x *invocation) error {
			p, s, err := scopePath(x)
			if err != nil {
				return err
			}
			if err := x.show(http.MethodDelete, p, nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stderr, "limits of %s cleared\n", s)
			return nil
		}})

	// Plans.
	const ppath = "/api/v1/admin/plans"
	add(&command{path: []string{"plans", "list"}, nargs: 0, summary: "list plans", examples: []string{"sluice plans list"},
		run: func(x *invocation) error { return x.show(http.MethodGet, ppath, nil, nil) }})
	add(&command{path: []string{"plans", "get"}, args: "NAME", nargs: 1, summary: "show a plan", examples: []string{"sluice plans get pro"},
		run: func(x *invocation) error {
			return x.show(http.MethodGet, ppath+"/"+url.PathEscape(x.args[0]), nil, nil)
		}})
	add(&command{path: []string{"plans", "set"}, args: "NAME", nargs: 1, summary: "create a plan, or change one (the fields not given are kept)",
		flags: []flagSpec{{"description", "TEXT", "what the plan is for"}, {"priority", "P", "low, normal or high: who is served first when runs wait"},
			{"limits", "JSON", "the plan's limits: they replace the plan's limits"}},
		examples: []string{`sluice plans set lab --priority normal --limits '{"requests":"60/min","tokens":"500000/day","concurrency":2}'`,
			`sluice plans set lab --description "for lab groups"`},
		run: func(x *invocation) error {
			p := ppath + "/" + url.PathEscape(x.args[0])
			b := map[string]any{}
			var old map[string]json.RawMessage
			err := x.c.Do(x.ctx, http.MethodGet, p, nil, nil, &old)
			if err != nil && errs.CodeOf(err) != errs.NotFound {
				return err
			}
			for _, k := range []string{"description", "priority", "limits"} {
				if v, ok := old[k]; ok {
					b[k] = v
				}
			}
			for k, v := range body(x.flags) {
				b[k] = v
			}
			return x.show(http.MethodPut, p, nil, b)
		}})
	add(&command{path: []string{"plans", "delete"}, args: "NAME", nargs: 1, summary: "delete a plan no scope uses", examples: []string{"sluice plans delete lab"},
		run: func(x *invocation) error {
			if err := x.show(http.MethodDelete, ppath+"/"+url.PathEscape(x.args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stderr, "plan %s deleted\n", x.args[0])
			return nil
		}})

	// Grants.
	const gpath = "/api/v1/admin/grants"
	fScope := flagSpec{"scope", "SCOPE", "tenant/NAME, department/NAME, project/NAME, user/NAME, key/NAME or membership/USER@PROJECT"}
	add(&command{path: []string{"grants", "list"}, nargs: 0, summary: "list grants", flags: []flagSpec{fTenant, fScope, {"active", "", "only those in force now"}},
		examples: []string{"sluice grants list --tenant university --active", "sluice grants list --scope project/group-1 --tenant university"},
		run: func(x *invocation) error {
			q := query(x.flags)
			if q.Get("active") == "false" {
				q.Del("active")
			}
			return x.show(http.MethodGet, gpath, q, nil)
		}})
	add(&command{path: []string{"grants", "create"}, nargs: 0, summary: "raise a scope's limits for a while",
		about: "The amounts in --limits are added to the scope's limits until the grant expires; a grant only raises limits that exist.",
		flags: []flagSpec{fTenant, fScope, {"limits", "JSON", `the raise, such as '{"tokens":"50000/day"}'`},
			{"expires-in", "DURATION", "how long: 72h, 7d"}, {"expires-at", "TIME", "until this time (RFC 3339)"}, {"reason", "TEXT", "why (kept in the audit log)"}},
		examples: []string{`sluice grants create --tenant university --scope user/alice --limits '{"tokens":"50000/day"}' --expires-in 3d --reason "exam week"`},
		run: func(x *invocation) error {
			if err := need(x, "scope", "limits"); err != nil {
				return err
			}
			in, at := x.flags["expires_in"], x.flags["expires_at"]
			if (in == "") == (at == "") {
				return usageError("grants create needs --expires-in DURATION or --expires-at TIME (one of them)")
			}
			if in != "" {
				d, err := parseDays(in)
				if err != nil || d <= 0 {
					return usageError(fmt.Sprintf("grants create: --expires-in must be a duration such as 72h or 7d, not %q", in))
				}
				at = time.Now().Add(d).UTC().Format(time.RFC3339)
			}
			b := body(x.flags)
			delete(b, "tenant_id")
			delete(b, "expires_in")
			b["expires_at"] = at
			return x.show(http.MethodPost, gpath, nil, b)
		}})
	add(&command{path: []string{"grants", "delete"}, aliases: []string{"revoke"}, args: "ID", nargs: 1, summary: "revoke a grant at once",
		examples: []string{"sluice grants delete grt_01…"},
		run: func(x *invocation) error {
			return x.show(http.MethodDelete, gpath+"/"+url.PathEscape(x.args[0]), nil, nil)
		}})
}

func usageCommands(add func(*command)) {
	add(&command{path: []string{"usage"}, nargs: 0, summary: "use, limits, percent and resets of your scopes",
		about: "Without flags: every scope your key's requests count against (tenant, departments, project, you, the key).",
		flags: []flagSpec{{"scope", "SCOPE", "one scope instead: project/NAME, user/NAME, …"}, fTenant,
			{"user", "NAME", "the chain of this user (admins)"}, {"project", "NAME", "the chain in this project"}},
		examples: []string{"sluice usage", "sluice usage --scope project/group-1 --tenant university", "sluice usage -o json"},
		run: func(x *invocation) error {
			q := query(x.flags)
			q.Del("tenant_id") // it only narrowed names
			return x.show(http.MethodGet, "/api/v1/usage", q, nil)
		}})
	add(&command{path: []string{"usage", "keys"}, nargs: 0, summary: "spend per API key (tokens, requests, cost)",
		flags:    []flagSpec{fTenant, fUser, {"period", "MONTH", "the month, such as 2026-05 (default: this month)"}, fLimit, fAfter},
		examples: []string{"sluice usage keys --tenant university", "sluice usage keys --user alice --period 2026-05"},
		run:      func(x *invocation) error { return keySpend(x.ctx, x.c, x.out(), x.flags) }})
	add(&command{path: []string{"usage", "report"}, nargs: -1, help: usageReportText, formats: []string{"csv"},
		summary: "use per day or month (and model, or project), from the ledger",
		flags: []flagSpec{{"scope", "SCOPE", ""}, {"month", "M", ""}, {"from", "DAY", ""}, {"to", "DAY", ""}, {"group", "G", ""},
			{"by", "B", ""}, {"format", "F", ""}, fTenant},
		examples: []string{"sluice usage report --month 2026-11 --by project --format csv > november.csv"},
		run: func(x *invocation) error {
			if x.outputFlag != "" {
				x.flags["o"] = x.outputFlag
			} else if x.flags["format"] == "" {
				x.flags["format"] = x.format
			}
			return usageReport(x.ctx, x.c, x.stdout, x.args, x.flags)
		}})

	for _, verb := range []string{"create", "list", "get", "approve", "deny", "cancel"} {
		var flags []flagSpec
		for _, name := range requestFlags[verb] {
			switch name {
			case "tenant_id":
				flags = append(flags, fTenant)
			case "user_id":
				flags = append(flags, fUser)
			case "scope":
				flags = append(flags, flagSpec{"scope", "SCOPE", "whose limit: user/NAME, project/NAME, … (default: yours)"})
			default:
				flags = append(flags, flagSpec{dashed(name), "VALUE", requestFlagHelp[name]})
			}
		}
		c := &command{path: []string{"requests", verb}, nargs: 1, args: "ID", flags: flags, summary: requestSummaries[verb],
			examples: requestExamples[verb],
			run: func(x *invocation) error {
				return requestsCmd(x.ctx, x.c, x.out(), append([]string{verb}, x.args...), x.flags)
			}}
		if verb == "create" || verb == "list" {
			c.nargs, c.args = 0, ""
		}
		add(c)
	}
}

var requestSummaries = map[string]string{
	"create": "ask for more of a dimension, for a while, saying why", "list": "list requests (yours; a tenant's for its admins)",
	"get": "show a request", "approve": "approve: a temporary grant in force at once", "deny": "deny, with a reason the requester sees",
	"cancel": "withdraw your pending request",
}

var requestFlagHelp = map[string]string{
	"dimension": "tokens_day, tokens_month, requests, … (docs/quota-requests.md)", "amount": "how much more",
	"duration": "for how long: 72h, 7d", "reason": "why", "status": "pending, approved, denied or cancelled",
	"limit": "at most N items", "after": "the page after this id", "expires_at": "until this time (RFC 3339), instead of --duration",
	"note": "a note the requester sees",
}

var requestExamples = map[string][]string{
	"create":  {`sluice requests create --dimension tokens_day --amount 50000 --duration 72h --reason "exam week"`},
	"list":    {"sluice requests list --status pending"},
	"get":     {"sluice requests get qrq_01…"},
	"approve": {`sluice requests approve qrq_01… --amount 20000 --note "20k will do"`},
	"deny":    {`sluice requests deny qrq_01… --reason "one raise a week"`},
	"cancel":  {"sluice requests cancel qrq_01…"},
}

// query turns flags into query parameters.
func query(flags map[string]string) url.Values {
	q := url.Values{}
	for k, v := range flags {
		q.Set(k, v)
	}
	return q
}

// body turns flags into a JSON object; limits and guarantees are JSON
// themselves, sent as written.
func body(flags map[string]string) map[string]any {
	b := map[string]any{}
	for k, v := range flags {
		if jsonFields[k] {
			b[k] = json.RawMessage(v)
			continue
		}
		b[k] = v
	}
	return b
}

// need says which required flags are missing.
func need(x *invocation, names ...string) error {
	var missing []string
	for _, n := range names {
		if x.flags[n] == "" {
			missing = append(missing, "--"+dashed(strings.TrimSuffix(n, "_id")))
		}
	}
	if len(missing) > 0 {
		return usageError(fmt.Sprintf("%s needs %s (sluice %s -h)", x.cmd.name(), strings.Join(missing, " and "), x.cmd.name()))
	}
	return nil
}

// checkJSON refuses a JSON flag that is not JSON before anything is sent.
func checkJSON(x *invocation) error {
	for k, v := range x.flags {
		if (jsonFields[k] || k == "tweaks") && !json.Valid([]byte(v)) {
			return usageError(fmt.Sprintf("%s: --%s must be a JSON object such as '{\"requests\":\"10/min\"}'", x.cmd.name(), dashed(k)))
		}
	}
	return nil
}

// parseDays reads a duration, with d for days: 72h, 7d, 1d12h.
func parseDays(s string) (time.Duration, error) {
	days := time.Duration(0)
	if d, rest, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil {
			return 0, errors.New("bad days")
		}
		days = time.Duration(n) * 24 * time.Hour
		s = rest
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	return days + d, err
}
