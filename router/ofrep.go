package router

import (
	"errors"
	"io"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/router/auth"
)

// FlagSource is the flag state the router routes by (a *flags.Watcher, or
// the FlagPicker built on it). OFREP answers from the same source, so an
// application's OpenFeature SDK and the router agree.
type FlagSource interface {
	Set() *flags.Set
}

// ofrepMaxBodyBytes bounds an OFREP request: an evaluation context.
const ofrepMaxBodyBytes = 64 << 10

// mountOFREP serves the OpenFeature Remote Evaluation Protocol on the data
// listener: POST /ofrep/v1/evaluate/flags/{key} and the bulk POST
// /ofrep/v1/evaluate/flags.
//
// Which key may ask (keys on): any valid key, through the echo routes' auth
// middleware, spending a token of the key's rate as a data-path request
// does; what it sees is the flags of the functions it may call ("*": every
// flag in the file). A flag it may not see is answered exactly as one that
// does not exist (404 FLAG_NOT_FOUND, left out of bulk), as admit answers a
// limited key alike for a function it may not call and one that does not
// exist: a caller learns nothing about functions its key may not call.
func (rt *Router) mountOFREP(e *echo.Echo) {
	e.POST("/ofrep/v1/evaluate/flags/:key", rt.ofrepFlag, rt.spendRate)
	e.POST("/ofrep/v1/evaluate/flags", rt.ofrepBulk, rt.spendRate)
}

func (rt *Router) ofrepFlag(c echo.Context) error {
	visible := rt.ofrepVisible(c)
	key := c.Param("key")
	ctx, err := readOFREPContext(c)
	if he := (*httpErr)(nil); errors.As(err, &he) {
		return err
	} else if err != nil {
		return c.JSON(http.StatusBadRequest, flags.OFREPFailure{Key: key, ErrorCode: flags.ErrInvalidContext, ErrorDetails: err.Error(), Error: err.Error()})
	}
	if !visible(key) {
		return c.JSON(http.StatusNotFound, flags.OFREPNotFound(key))
	}
	ans, status := rt.cfg.Flags.Set().OFREP(key, ctx)
	return c.JSON(status, ans)
}

func (rt *Router) ofrepBulk(c echo.Context) error {
	visible := rt.ofrepVisible(c)
	ctx, err := readOFREPContext(c)
	if he := (*httpErr)(nil); errors.As(err, &he) {
		return err
	} else if err != nil {
		return c.JSON(http.StatusBadRequest, flags.OFREPFailure{ErrorCode: flags.ErrInvalidContext, ErrorDetails: err.Error(), Error: err.Error()})
	}
	set := rt.cfg.Flags.Set()
	keys := slices.DeleteFunc(set.Keys(), func(k string) bool { return !visible(k) })
	body, etag, err := set.OFREPBulkBody(keys, ctx)
	if err != nil {
		return err
	}
	c.Response().Header().Set("ETag", etag)
	if inm := c.Request().Header.Get("If-None-Match"); inm != "" && flags.ETagMatches(inm, etag) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.JSONBlob(http.StatusOK, body)
}

// ofrepVisible says which flags the caller may see (see mountOFREP).
func (rt *Router) ofrepVisible(c echo.Context) func(flag string) bool {
	id, _ := auth.IdentityOf(c)
	if id == nil || slices.Contains(id.Functions, "*") {
		return func(string) bool { return true }
	}
	allowed := map[string]bool{}
	for name, fn := range rt.fns {
		if id.Allows(name) {
			allowed[fn.Flag] = true
		}
	}
	return func(flag string) bool { return allowed[flag] }
}

func readOFREPContext(c echo.Context) (map[string]any, error) {
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, ofrepMaxBodyBytes+1))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	if len(body) > ofrepMaxBodyBytes {
		return nil, errorf(http.StatusRequestEntityTooLarge, "an OFREP request body is at most %d bytes", ofrepMaxBodyBytes)
	}
	return flags.ParseOFREPRequest(body)
}
