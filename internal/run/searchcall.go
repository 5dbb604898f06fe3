package run

import (
	"context"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// SearchCaller makes a run's calls to search services (Tavily, SearchApi,
// arXiv) where their keys are. *Executor makes them in the server; the
// executor of a sandboxed run, in its worker, asks the server, so that a
// service's key and the call's SSRF guard never leave the server.
type SearchCaller interface {
	Search(ctx context.Context, job *Job, c SearchCall) (SearchResult, error)
}

var _ SearchCaller = (*Executor)(nil)

// SearchCall is one search a node asks for. The server reads the node's
// other fields (max_results, search_depth, …) from its own copy of the
// flow and the job's tweaks: a worker names the node and the query only.
type SearchCall struct {
	NodeID string `json:"node_id"`
	Query  string `json:"query"`
}

// SearchResult is a search's results, each an ordered list of fields.
type SearchResult struct {
	Rows [][]SearchField `json:"rows"`
}

// SearchField is one field of a search result.
type SearchField struct {
	Name  string `json:"name"`
	Value any    `json:"value"`
}

// Search implements SearchCaller: the search of a node of the job's flow.
func (e *Executor) Search(ctx context.Context, job *Job, c SearchCall) (SearchResult, error) {
	var n *flow.Node
	if job != nil && job.Flow != nil {
		n = job.Flow.Node(c.NodeID)
	}
	if n == nil || !isSearch(n.Type) {
		return SearchResult{}, errs.Field(errs.Invalid, "node_id", "node %q is not a search component of this run's flow", c.NodeID)
	}
	s := &state{e: e, job: job, f: job.Flow, outputs: map[string]map[string]value{}, inputs: map[string]map[string][]value{}}
	rows, err := s.searchHere(ctx, n, c.Query)
	out := SearchResult{Rows: make([][]SearchField, len(rows))}
	for i, r := range rows {
		out.Rows[i] = make([]SearchField, len(r))
		for j, f := range r {
			out.Rows[i][j] = SearchField{Name: f.name, Value: f.value}
		}
	}
	return out, err
}

// searchRows calls the node's service with query and returns its results
// as rows: here, or through the server from a sandbox worker.
func (s *state) searchRows(ctx context.Context, n *flow.Node, query string) ([]row, error) {
	if s.e.Calls == nil {
		return s.searchHere(ctx, n, query)
	}
	sc, ok := s.e.Calls.(SearchCaller)
	if !ok {
		spec := searchSpecs[n.Type]
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID, "node %s (%s): runs that execute in this sandbox worker cannot call search services", n.ID, spec.title)
	}
	res, err := sc.Search(ctx, s.job, SearchCall{NodeID: n.ID, Query: query})
	if err != nil {
		return nil, err
	}
	rows := make([]row, len(res.Rows))
	for i, r := range res.Rows {
		rows[i] = make(row, len(r))
		for j, f := range r {
			rows[i][j] = field{name: f.Name, value: f.Value}
		}
	}
	return rows, nil
}
