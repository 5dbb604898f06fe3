package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
)

const flowAbout = "FLOW is the flow's id, endpoint name or name."

func flowCommands(add func(*command)) {
	const path = "/api/v1/flows"
	fFlowProject := flagSpec{"project", "NAME", "the project the flow belongs to, by name or id (default: your key's)"}
	add(&command{path: []string{"flows", "upload"}, args: "FILE", nargs: 1, summary: "upload a flow (a LangFlow export); - reads standard input",
		flags: []flagSpec{fTenant, fFlowProject, {"name", "NAME", "the flow's name (default: the export's)"},
			{"endpoint-name", "NAME", "the name to run it by: sluice flows run NAME"}},
		examples: []string{"sluice flows upload basic-prompting.json --project group-1 --endpoint-name basic"},
		run: func(x *invocation) error {
			data, err := readInput(x.args[0])
			if err != nil {
				return err
			}
			return x.showRaw(http.MethodPost, path, flowQuery(x.flags), data)
		}})
	add(&command{path: []string{"flows", "list"}, nargs: 0, summary: "list flows", flags: []flagSpec{fTenant, fProject, fLimit, fAfter},
		examples: []string{"sluice flows list", "sluice flows list --tenant university --project group-1"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, path, query(x.flags), nil) }})
	add(&command{path: []string{"flows", "get"}, args: "FLOW", nargs: 1, summary: "show a flow (-o json: with its graph)", about: flowAbout,
		flags: []flagSpec{fTenant}, examples: []string{"sluice flows get basic", "sluice flows get basic -o json > basic.json"},
		run: func(x *invocation) error {
			id, err := x.flowID()
			if err != nil {
				return err
			}
			return x.show(http.MethodGet, path+"/"+url.PathEscape(id), nil, nil)
		}})
	add(&command{path: []string{"flows", "update"}, args: "FLOW FILE", nargs: 2, summary: "replace a flow's graph with a new export", about: flowAbout,
		flags:    []flagSpec{fTenant, {"name", "NAME", "a new name"}, {"endpoint-name", "NAME", "a new endpoint name"}},
		examples: []string{"sluice flows update basic basic-prompting.json"},
		run: func(x *invocation) error {
			id, err := x.flowID()
			if err != nil {
				return err
			}
			data, err := readInput(x.args[1])
			if err != nil {
				return err
			}
			q := flowQuery(x.flags)
			q.Del("tenant_id")
			return x.showRaw(http.MethodPut, path+"/"+url.PathEscape(id), q, data)
		}})
	add(&command{path: []string{"flows", "delete"}, args: "FLOW", nargs: 1, summary: "delete a flow", about: flowAbout, flags: []flagSpec{fTenant},
		examples: []string{"sluice flows delete basic"},
		run: func(x *invocation) error {
			id, err := x.flowID()
			if err != nil {
				return err
			}
			if err := x.show(http.MethodDelete, path+"/"+url.PathEscape(id), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(x.stderr, "flow %s deleted\n", x.args[0])
			return nil
		}})
	add(&command{path: []string{"flows", "run"}, args: "FLOW", nargs: 1, long: true, summary: "run a flow on the server and print its answer",
		about: flowAbout + `
On a terminal the answer's text is printed, and the run's id, status and use on standard
error; -o json prints the API's answer (with --stream, each event as one JSON line).
--stream prints tokens as they arrive (for model nodes whose stream is on; see docs/flows.md).
(sluice run FLOW.json runs a flow file in this process instead, without a server.)`,
		flags: []flagSpec{fTenant, {"input", "TEXT", "the run's input"}, {"input-type", "T", "chat (default), text or any"},
			{"output-type", "T", "chat, text, any or debug"}, {"output-component", "NODE", "the node whose output to answer with"},
			{"tweaks", "JSON", `per-node changes: '{"OpenAIModel-x":{"stream":true}}'`}, {"session", "ID", "the chat session (Memory remembers per session)"},
			{"stream", "", "print the answer as it arrives"}},
		examples: []string{`sluice flows run basic --input "Write a haiku about queues"`,
			`sluice flows run basic --input "hi" --stream --tweaks '{"OpenAIModel-x":{"stream":true}}'`,
			`sluice flows run basic --input "hi" -o json`},
		run: flowRun})

	add(&command{path: []string{"runs", "list"}, nargs: 0, summary: "list runs",
		flags:    []flagSpec{fTenant, {"flow", "FLOW", "runs of this flow"}, fProject, fUser, fLimit, fAfter},
		examples: []string{"sluice runs list --flow basic", "sluice runs list --tenant university --user alice"},
		run: func(x *invocation) error {
			q := query(x.flags)
			if f := q.Get("flow"); f != "" {
				id, err := x.names.flow(x.tenantScope(), f)
				if err != nil {
					return err
				}
				q.Del("flow")
				q.Set("flow_id", id)
			}
			return x.show(http.MethodGet, "/api/v1/runs", q, nil)
		}})
	add(&command{path: []string{"runs", "show"}, aliases: []string{"get"}, args: "RUN", nargs: 1, summary: "a run: status, use, and each node's time, tokens and cost",
		examples: []string{"sluice runs show run_01…"},
		run: func(x *invocation) error {
			return x.show(http.MethodGet, "/api/v1/runs/"+url.PathEscape(x.args[0]), nil, nil)
		}})
	add(&command{path: []string{"runs", "cancel"}, args: "RUN", nargs: 1, summary: "cancel a running run (yours, or as an admin); it gives back what it holds",
		examples: []string{"sluice runs cancel run_01…"},
		run: func(x *invocation) error {
			return x.show(http.MethodPost, "/api/v1/runs/"+url.PathEscape(x.args[0])+"/cancel", nil, nil)
		}})
}

// flowID resolves the command's first argument to a flow id.
func (x *invocation) flowID() (string, error) { return x.names.flow(x.tenantScope(), x.args[0]) }

// flow resolves a flow's id, endpoint name or name to its id; a value that
// matches nothing is sent as is, for the server to judge.
func (r *resolver) flow(tenant, value string) (string, error) {
	if idShape.MatchString(value) && strings.HasPrefix(value, "flw_") {
		return value, nil
	}
	items, err := r.list("flow", tenant)
	if err != nil {
		return "", fmt.Errorf("finding flow %q: %w", value, err)
	}
	var hits []named
	for _, it := range items {
		if it.EndpointName == value {
			return it.ID, nil
		}
		if it.Name == value {
			hits = append(hits, it)
		}
	}
	switch len(hits) {
	case 0:
		return value, nil
	case 1:
		return hits[0].ID, nil
	}
	var ids []string
	for _, h := range hits {
		ids = append(ids, h.ID)
	}
	return "", errs.Field(errs.Invalid, "flow", "%d flows are named %q: %s; give the id or the endpoint name", len(hits), value, strings.Join(ids, ", "))
}

func flowQuery(flags map[string]string) url.Values {
	q := url.Values{}
	for k, v := range flags {
		if k == "tenant_id" {
			continue // it only narrowed the project's name
		}
		q.Set(k, v)
	}
	return q
}

// readInput reads a file, or standard input for "-".
func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, usageError(fmt.Sprintf("cannot read %s: %v", path, pe.Err))
		}
		return nil, err
	}
	return data, nil
}

// showRaw sends data as JSON, as it is, and prints the answer.
func (x *invocation) showRaw(method, path string, q url.Values, data []byte) error {
	var raw json.RawMessage
	if err := x.c.DoRaw(x.ctx, method, path, q, "application/json", data, &raw); err != nil {
		return err
	}
	return printRaw(x.out(), raw)
}

// flowRun runs a flow on the server: the answer's text for people, the
// API's JSON with -o json; with --stream, as it arrives.
func flowRun(x *invocation) error {
	id, err := x.flowID()
	if err != nil {
		return err
	}
	req := map[string]any{"input_value": x.flags["input"]}
	for flag, field := range map[string]string{"input_type": "input_type", "output_type": "output_type", "output_component": "output_component", "session": "session_id"} {
		if v := x.flags[flag]; v != "" {
			req[field] = v
		}
	}
	if t := x.flags["tweaks"]; t != "" {
		req["tweaks"] = json.RawMessage(t)
	}
	data, _ := json.Marshal(req)
	path := "/api/v1/run/" + url.PathEscape(id)
	if x.flags["stream"] != "true" {
		var raw json.RawMessage
		if err := x.c.DoRaw(x.ctx, http.MethodPost, path, nil, "application/json", data, &raw); err != nil {
			return err
		}
		if x.format == "json" {
			return printRaw(x.stdout, raw)
		}
		var res runAnswer
		if err := json.Unmarshal(raw, &res); err != nil {
			return fmt.Errorf("the server's answer is not a run's (%v)", err)
		}
		for _, t := range res.texts() {
			fmt.Fprintln(x.stdout, t)
		}
		res.summary(x.stderr)
		return nil
	}
	body, err := x.c.Stream(x.ctx, http.MethodPost, path, url.Values{"stream": {"true"}}, "application/json", data)
	if err != nil {
		return err
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	tokens := false
	for {
		var ev struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		if err := dec.Decode(&ev); err == io.EOF {
			return errs.E(errs.Unavailable, "the run's stream ended before its end event")
		} else if err != nil {
			return errs.E(errs.Unavailable, "the run's stream broke off: %v", err)
		}
		if x.format == "json" {
			line, _ := json.Marshal(ev)
			fmt.Fprintf(x.stdout, "%s\n", line)
		}
		switch ev.Event {
		case "token":
			var t struct {
				Chunk string `json:"chunk"`
			}
			_ = json.Unmarshal(ev.Data, &t)
			if x.format != "json" {
				fmt.Fprint(x.stdout, t.Chunk)
			}
			tokens = true
		case "error":
			var e struct {
				Error  string `json:"error"`
				RunID  string `json:"run_id"`
				Status string `json:"status"`
			}
			_ = json.Unmarshal(ev.Data, &e)
			if tokens && x.format != "json" {
				fmt.Fprintln(x.stdout)
			}
			if e.RunID != "" {
				return errs.E(errs.Unprocessable, "run %s ended %s: %s", e.RunID, e.Status, e.Error)
			}
			return errs.E(errs.Unprocessable, "the run failed: %s", e.Error)
		case "end":
			var end struct {
				Result runAnswer `json:"result"`
			}
			_ = json.Unmarshal(ev.Data, &end)
			if x.format != "json" {
				if tokens {
					fmt.Fprintln(x.stdout)
				} else {
					for _, t := range end.Result.texts() {
						fmt.Fprintln(x.stdout, t)
					}
				}
			}
			end.Result.summary(x.stderr)
			return nil
		}
	}
}

// runAnswer is the part of LangFlow's run answer the CLI prints.
type runAnswer struct {
	RunID   string `json:"run_id"`
	Outputs []struct {
		Outputs []struct {
			Outputs struct {
				Message struct {
					Message string `json:"message"`
				} `json:"message"`
			} `json:"outputs"`
		} `json:"outputs"`
	} `json:"outputs"`
	Usage struct {
		InputTokens  int64   `json:"input_tokens"`
		OutputTokens int64   `json:"output_tokens"`
		CostUSD      float64 `json:"cost_usd"`
		Steps        int64   `json:"steps"`
	} `json:"usage"`
}

func (a runAnswer) texts() []string {
	var out []string
	for _, o := range a.Outputs {
		for _, c := range o.Outputs {
			out = append(out, c.Outputs.Message.Message)
		}
	}
	return out
}

func (a runAnswer) summary(w io.Writer) {
	u := a.Usage
	fmt.Fprintf(w, "run %s: %d steps, %d input + %d output tokens, $%.6f (sluice runs show %s)\n",
		a.RunID, u.Steps, u.InputTokens, u.OutputTokens, u.CostUSD, a.RunID)
}

// printRaw prints an answer already read: indented JSON, or a table when
// w asks for one.
func printRaw(w io.Writer, raw json.RawMessage) error {
	if len(raw) == 0 {
		return nil
	}
	if o, ok := w.(*output); ok && o.format == "table" {
		return o.render(raw)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}
