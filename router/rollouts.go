package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/router/rollout"
)

// RolloutRequest is the body of POST /admin/rollouts; durations are Go
// duration strings ("30s", "50ms").
type RolloutRequest struct {
	Function     string  `json:"function"`
	To           string  `json:"to"`
	Steps        []int   `json:"steps"`
	Interval     string  `json:"interval"`
	MaxErrorRate float64 `json:"max_error_rate"`
	MaxP99       string  `json:"max_p99"`
	MinRequests  int     `json:"min_requests"`
}

// Spec validates the request's durations and turns it into a rollout spec.
func (r RolloutRequest) Spec() (rollout.Spec, error) {
	s := rollout.Spec{Function: r.Function, To: r.To, Steps: r.Steps, MaxErrorRate: r.MaxErrorRate, MinRequests: r.MinRequests}
	var err error
	if r.Interval != "" {
		if s.Interval, err = time.ParseDuration(r.Interval); err != nil {
			return s, fmt.Errorf("interval %q: %v", r.Interval, err)
		}
	}
	if r.MaxP99 != "" {
		if s.MaxP99, err = time.ParseDuration(r.MaxP99); err != nil {
			return s, fmt.Errorf("max_p99 %q: %v", r.MaxP99, err)
		}
	}
	return s, nil
}

func rolloutError(err error) error {
	var se *rollout.SpecError
	switch {
	case errors.As(err, &se):
		return errorf(http.StatusBadRequest, "%s", se.Msg)
	case errors.Is(err, rollout.ErrRunning):
		return errorf(http.StatusConflict, "%v", err)
	}
	return err
}

func (rt *Router) startRollout(c echo.Context) error {
	var req RolloutRequest
	dec := json.NewDecoder(http.MaxBytesReader(c.Response(), c.Request().Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errorf(http.StatusBadRequest, "malformed rollout request: %v", err)
	}
	spec, err := req.Spec()
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	st, err := rt.cfg.Rollouts.Start(spec)
	if err != nil {
		return rolloutError(err)
	}
	return c.JSON(http.StatusAccepted, st)
}

func (rt *Router) rolloutStatus(c echo.Context) error {
	st, ok := rt.cfg.Rollouts.Status(c.Param("function"))
	if !ok {
		return errorf(http.StatusNotFound, "no rollout of %q", c.Param("function"))
	}
	return c.JSON(http.StatusOK, st)
}

func (rt *Router) listRollouts(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"rollouts": rt.cfg.Rollouts.List()})
}

func (rt *Router) abortRollout(c echo.Context) error {
	st, err := rt.cfg.Rollouts.Abort(c.Param("function"))
	if err != nil {
		var se *rollout.SpecError
		if errors.As(err, &se) {
			return errorf(http.StatusNotFound, "%s", se.Msg)
		}
		return err
	}
	return c.JSON(http.StatusOK, st)
}
