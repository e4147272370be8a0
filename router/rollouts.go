package router

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/router/rollout"
)

// rolloutRoutes serves the rollout controller on an admin handler:
// GET /admin/rollouts, POST /admin/rollouts (body: rollout.Spec's JSON,
// durations as Go duration strings), GET and DELETE (abort)
// /admin/rollouts/:function, POST /admin/rollouts/:function/undo.
func (rt *Router) rolloutRoutes(a *echo.Echo) {
	if rt.cfg.Rollouts == nil {
		return
	}
	a.GET("/admin/rollouts", rt.listRollouts)
	a.POST("/admin/rollouts", rt.startRollout)
	a.GET("/admin/rollouts/:function", rt.rolloutStatus)
	a.DELETE("/admin/rollouts/:function", rt.abortRollout)
	a.POST("/admin/rollouts/:function/undo", rt.undoRollout)
}

// rolloutError maps the controller's errors to statuses.
func rolloutError(err error) error {
	var se *rollout.SpecError
	var ce *rollout.ConflictError
	var ne *rollout.NotFoundError
	switch {
	case errors.As(err, &se):
		return errorf(http.StatusBadRequest, "%s", se.Msg)
	case errors.As(err, &ne):
		return errorf(http.StatusNotFound, "%s", ne.Error())
	case errors.As(err, &ce):
		return errorf(http.StatusConflict, "%s", ce.Msg)
	case errors.Is(err, rollout.ErrRunning):
		return errorf(http.StatusConflict, "%v", err)
	}
	return err
}

func (rt *Router) startRollout(c echo.Context) error {
	var spec rollout.Spec
	dec := json.NewDecoder(http.MaxBytesReader(c.Response(), c.Request().Body, 64<<10))
	if err := dec.Decode(&spec); err != nil {
		return errorf(http.StatusBadRequest, "malformed rollout request: %v", err)
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
		return rolloutError(err)
	}
	return c.JSON(http.StatusOK, st)
}

func (rt *Router) undoRollout(c echo.Context) error {
	st, err := rt.cfg.Rollouts.Undo(c.Param("function"))
	if err != nil {
		return rolloutError(err)
	}
	return c.JSON(http.StatusOK, st)
}
