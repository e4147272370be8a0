package admin

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
)

// TargetsPath is Prometheus's HTTP service discovery (http_sd_configs) on
// the admin endpoints: the router and every live runtime process, so one
// scrape config (config/monitoring/prometheus-local.yml) follows instances
// that come and go on random ports at every cold start.
//
// It is open to scrapers like /metrics (router.ScrapeRoute), not behind an
// admin key like the rest of /admin: Prometheus would otherwise hold an
// admin key, which can start and abort rollouts, only to learn loopback
// addresses, pids and the function and revision names /metrics already
// carries. Credentials stay at the router.
const TargetsPath = "/admin/prometheus/targets"

// Roles of a listed target: the __meta_pilotlight_role label, which scrape
// configs keep or drop by (a __meta_ label is gone after relabelling).
const (
	RoleRouter   = "router"
	RoleInstance = "instance"
	RolePool     = "pool"
)

const roleLabel = "__meta_pilotlight_role"

// ScrapeTarget is a runtime process whose /metrics Prometheus should scrape.
type ScrapeTarget struct {
	Addr string // host:port
	PID  int
	// Function and Revision are what it serves; both empty for an idle
	// warm-pool process (RolePool) and for a shared process (Shared: its
	// series carry each revision's function and revision labels).
	Function, Revision string
	Shared             bool
}

// targetGroup is one entry of http_sd_configs' JSON: a list of these.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

type targets struct{ list func() []ScrapeTarget }

// serve is GET /admin/prometheus/targets[?role=router,instance,pool]. The
// router's own target is the address the request reached (its Host), the
// one Prometheus already knows works; instances carry function, revision
// and pid as target labels.
func (t targets) serve(c echo.Context) error {
	roles, err := wantedRoles(c.QueryParams())
	if err != nil {
		return err
	}
	out := []targetGroup{}
	if roles[RoleRouter] {
		out = append(out, targetGroup{Targets: []string{c.Request().Host}, Labels: map[string]string{roleLabel: RoleRouter}})
	}
	var list []ScrapeTarget
	if t.list != nil && (roles[RoleInstance] || roles[RolePool]) {
		list = t.list()
	}
	for _, p := range list {
		g := targetGroup{Targets: []string{p.Addr}, Labels: map[string]string{"pid": strconv.Itoa(p.PID)}}
		switch {
		case p.Shared:
			if !roles[RoleInstance] {
				continue
			}
			g.Labels[roleLabel] = RoleInstance
			g.Labels["isolation"] = "shared"
		case p.Function == "":
			if !roles[RolePool] {
				continue
			}
			g.Labels[roleLabel] = RolePool
		default:
			if !roles[RoleInstance] {
				continue
			}
			g.Labels[roleLabel] = RoleInstance
			g.Labels["function"], g.Labels["revision"] = p.Function, p.Revision
		}
		out = append(out, g)
	}
	return c.JSON(http.StatusOK, out)
}

// wantedRoles reads ?role= (comma-separated, repeatable; absent: every
// role). Anything else in the query is a mistake worth a 400, not silence:
// a misspelt filter would otherwise list everything.
func wantedRoles(q map[string][]string) (map[string]bool, error) {
	all := map[string]bool{RoleRouter: true, RoleInstance: true, RolePool: true}
	for k := range q {
		if k != "role" {
			return nil, echo.NewHTTPError(http.StatusBadRequest, "unknown query parameter "+strconv.Quote(k)+": "+TargetsPath+" takes only role (router, instance, pool)")
		}
	}
	vals, ok := q["role"]
	if !ok {
		return all, nil
	}
	want := map[string]bool{}
	for _, v := range vals {
		for _, r := range strings.Split(v, ",") {
			r = strings.TrimSpace(r)
			if !all[r] {
				return nil, echo.NewHTTPError(http.StatusBadRequest, "unknown role "+strconv.Quote(r)+": use router, instance or pool (comma-separated)")
			}
			want[r] = true
		}
	}
	return want, nil
}
