package console

import "net/http"

// flowRoutes will serve the flow pages: list, upload a LangFlow export,
// run with an input and watch the streamed answer, a run's page with its
// graph and per-node cost, cancel. Until then /console/flows says so.
// (Another change builds them on this package's session, CSRF and layout.)
func (c *Console) flowRoutes() {
	c.mux.HandleFunc("GET /console/flows", c.signedIn(func(w http.ResponseWriter, r *req) {
		c.render(w, r, http.StatusOK, "flows", "Flows", "flows", nil)
	}))
}
