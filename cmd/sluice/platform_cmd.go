package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// clientStdin is where commands read a secret or a file given as "-";
// tests replace it.
var clientStdin io.Reader = os.Stdin

// maxSecret is the most a secret read from a file or stdin may be; the
// server's own limits are lower (an upstream key: 1 KiB).
const maxSecret = 64 << 10

// readSecret reads a secret from the file the flag names, or from
// standard input when the flag is absent or "-". It refuses a terminal:
// what is typed there is shown and kept in the scrollback, and a secret is
// never shown. A trailing newline is dropped; an empty secret is refused
// naming the flag.
func readSecret(x *invocation, flag string) (string, error) {
	path := x.flags[strings.ReplaceAll(flag, "-", "_")]
	var r io.Reader
	from := "standard input"
	if path == "" || path == "-" {
		if f, ok := clientStdin.(*os.File); ok && isTerminal(f) {
			return "", usageError(fmt.Sprintf("%s: the secret is read from --%s FILE or standard input, not typed at a terminal "+
				"(it would be shown): sluice %s … --%s key.txt, or … < key.txt", x.cmd.name(), flag, x.cmd.name(), flag))
		}
		r = clientStdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return "", usageError(fmt.Sprintf("%s: --%s: %v", x.cmd.name(), flag, err))
		}
		defer f.Close()
		r, from = f, path
	}
	// One line: the secret, then perhaps a newline. Reading stops at the
	// first, so a pasted secret ends with Enter.
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxSecret+1), 4096).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read the secret from %s: %w", from, err)
	}
	if len(line) > maxSecret {
		return "", usageError(fmt.Sprintf("%s: --%s: the secret in %s is longer than %d bytes", x.cmd.name(), flag, from, maxSecret))
	}
	secret := strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(secret) == "" {
		return "", usageError(fmt.Sprintf("%s: --%s: %s holds no secret", x.cmd.name(), flag, from))
	}
	return secret, nil
}

// scopeSegments is a scope as path segments, each escaped:
// project/prj_… is "project/prj_…".
func scopeSegments(s string) string {
	parts := strings.Split(s, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// platformCommands are the platform's settings, the upstream keys Sluice
// forwards with, and the usage quarantine.
func platformCommands(add func(*command)) {
	const ppath = "/api/v1/admin/platform"
	platformView := &view{object: func(o *output, m map[string]any) error {
		tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
		msg, share := str(m, "message"), str(m, "reserved_share")
		if msg == "" {
			msg = "(none)"
		}
		if share == "" {
			share = "0"
		}
		fmt.Fprintf(tw, "read_only\t%s\nmessage\t%s\nreserved_share\t%s\n", text(m["read_only"] == true), oneLine(msg), share)
		return tw.Flush()
	}}
	add(&command{path: []string{"platform", "get"}, nargs: 0, summary: "the platform's settings: read-only mode and its message, the reserved share",
		view: platformView, examples: []string{"sluice platform get", "sluice platform get -o json"},
		run: func(x *invocation) error { return x.show(http.MethodGet, ppath, nil, nil) }})
	add(&command{path: []string{"platform", "set"}, nargs: 0, summary: "change the platform's settings (the fields not given are kept)",
		about: `--read-only stops new runs and admissions (503 with the message); reads, settlements of work
in flight and administration continue. --read-only=false ends it. Platform admins only.`,
		view: platformView,
		flags: []flagSpec{{"read-only", "", "refuse new work (--read-only=false to serve again)"},
			{"message", "TEXT", `what refused callers read (at most 500 characters; "" clears it)`},
			{"reserved-share", "X", "the share of the global concurrency limit kept for high-priority plans, 0 to 0.9"}},
		examples: []string{`sluice platform set --read-only --message "upgrading the database until 14:00 UTC"`,
			"sluice platform set --read-only=false --message ''", "sluice platform set --reserved-share 0.2"},
		run: func(x *invocation) error {
			_, ro := x.flags["read_only"]
			_, msg := x.flags["message"]
			_, hasShare := x.flags["reserved_share"]
			if !ro && !msg && !hasShare {
				return usageError("platform set needs --read-only, --message or --reserved-share (sluice platform set -h)")
			}
			b := map[string]any{}
			if err := x.c.Do(x.ctx, http.MethodGet, ppath, nil, nil, &b); err != nil {
				return err
			}
			if ro {
				b["read_only"] = x.flags["read_only"] == "true"
			}
			if msg {
				b["message"] = x.flags["message"]
			}
			if hasShare {
				f, err := numberFlag(x, "reserved-share", "0.2 (from 0 to 0.9)")
				if err != nil {
					return err
				}
				b["reserved_share"] = f
			}
			return x.show(http.MethodPut, ppath, nil, b)
		}})

	// Upstream keys: a scope's key to the LangFlow Sluice fronts, sealed at
	// rest; answers carry a hint (the last four characters), never the key.
	const upath = "/api/v1/admin/upstream-keys/"
	fService := flagSpec{"service", "NAME", "the upstream service (default langflow, the only one today)"}
	service := func(x *invocation) string {
		if s := x.flags["service"]; s != "" {
			return url.PathEscape(s)
		}
		return "langflow"
	}
	upScope := func(x *invocation) (string, error) {
		return x.names.scope(x.tenantScope(), x.args[0], "")
	}
	const upAbout = `SCOPE is user/NAME or project/NAME (ids work too), looked up within --tenant when given.
A user's key is used for their calls, else their project's, else the server's own.`
	add(&command{path: []string{"upstream-keys", "list"}, nargs: 0, summary: "list the upstream keys held (hints only, never the keys)",
		flags: []flagSpec{fService, fTenant},
		view: &view{object: func(o *output, m map[string]any) error {
			items, _ := m["data"].([]any)
			return o.table(items, []column{scopeCol("scope"), field("HINT", "hint"), ref("TENANT", "tenant_id", "tenant"),
				ref("UPDATED BY", "updated_by", "user"), field("UPDATED", "updated_at")})
		}},
		examples: []string{"sluice upstream-keys list", "sluice upstream-keys list --tenant university -o json"},
		run: func(x *invocation) error {
			q := url.Values{}
			if t := x.flags["tenant_id"]; t != "" {
				q.Set("tenant_id", t)
			}
			return x.show(http.MethodGet, upath+service(x), q, nil)
		}})
	add(&command{path: []string{"upstream-keys", "set"}, args: "SCOPE", nargs: 1, summary: "store the key Sluice forwards with for a user or project",
		about: upAbout + `
The key is read from --secret-file, or from standard input (not typed at a terminal); it is
sealed with the server's secret and never shown again, by the server or by this command.`,
		flags:      []flagSpec{fTenant, fService, {"secret-file", "FILE", "the file holding the key (default: standard input)"}},
		fieldFlags: map[string]string{"api_key": "secret-file"},
		examples: []string{"sluice upstream-keys set user/alice --tenant university --secret-file alice-langflow.key",
			"pass show langflow/group-1 | sluice upstream-keys set project/group-1 --tenant university"},
		run: func(x *invocation) error {
			s, err := upScope(x)
			if err != nil {
				return err
			}
			secret, err := readSecret(x, "secret-file")
			if err != nil {
				return err
			}
			return x.show(http.MethodPut, upath+service(x)+"/"+scopeSegments(s), nil, map[string]string{"api_key": secret})
		}})
	add(&command{path: []string{"upstream-keys", "delete"}, aliases: []string{"revoke"}, args: "SCOPE", nargs: 1,
		summary: "delete a user's or project's upstream key", about: upAbout, flags: []flagSpec{fTenant, fService},
		examples: []string{"sluice upstream-keys delete user/alice --tenant university"},
		run: func(x *invocation) error {
			s, err := upScope(x)
			if err != nil {
				return err
			}
			if err := x.show(http.MethodDelete, upath+service(x)+"/"+scopeSegments(s), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stderr, "upstream key of %s deleted\n", x.args[0])
			return nil
		}})

	add(&command{path: []string{"usage", "quarantine"}, nargs: 0, summary: "usage events the store set aside as malformed (platform admins)",
		about: "Oldest first. -o json has each event as it was recorded.",
		flags: []flagSpec{fLimit, {"after", "ID", "the page after this id (the last answer's next)"}},
		view: &view{columns: []column{field("AT", "at"), ref("TENANT", "tenant_id", "tenant"), field("EVENT", "event_id"),
			field("ERROR", "error"), field("ID", "id")}},
		examples: []string{"sluice usage quarantine", "sluice usage quarantine --limit 10 -o json"},
		run: func(x *invocation) error {
			return x.show(http.MethodGet, "/api/v1/admin/usage/quarantine", query(x.flags), nil)
		}})
}

// wholeFlag is a flag's value as a whole number, or a usage error naming
// the flag.
func wholeFlag(x *invocation, flag string) (int64, error) {
	v := x.flags[strings.ReplaceAll(flag, "-", "_")]
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, usageError(fmt.Sprintf("%s: --%s must be a whole number, not %q", x.cmd.name(), flag, v))
	}
	return n, nil
}

// numberFlag is a flag's value as a number, or a usage error naming the
// flag.
func numberFlag(x *invocation, flag, example string) (float64, error) {
	v := x.flags[strings.ReplaceAll(flag, "-", "_")]
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, usageError(fmt.Sprintf("%s: --%s must be a number such as %s, not %q", x.cmd.name(), flag, example, v))
	}
	return f, nil
}
