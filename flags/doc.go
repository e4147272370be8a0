// Package flags is the router's flag provider: it reads flag files in flagd's
// JSON format and evaluates them exactly as flagd does, so one flag file means
// the same thing here and to flagd itself. The router asks it, for every
// request, which revision of a function serves that request (flag key
// "<function>-revision"; the chosen variant's value is the revision name).
//
// The pieces, in the order a request meets them:
//
//   - [Parse] and [Validate] read a file into an immutable [Set]. A file
//     flagd refuses to load (malformed JSON, a field of the wrong JSON type,
//     a defaultVariant that is not a variant, an empty evaluator) is refused
//     with error-severity [Problem]s, so it never replaces a good one. A
//     file flagd loads is served, and what flagd would only discover at
//     evaluation time (an operator given the wrong arguments, an unknown
//     sem_ver operator, a negative or all-zero fractional weight, a $ref to
//     a missing evaluator, a literal variant name that does not exist) is a
//     warning with its JSON path, evaluated exactly as flagd evaluates it.
//   - [Set.Evaluate] is flagd's evaluation core: state, targeting (JSONLogic
//     with flagd's custom operators fractional, sem_ver, starts_with,
//     ends_with and the injected $flagd properties), reasons and error codes.
//   - [Provider] wraps an atomically swapped *Set as an OpenFeature provider
//     (github.com/open-feature/go-sdk), so evaluation takes no lock.
//   - [Watcher] hot-reloads the file with fsnotify and swaps the Set.
//   - [Set.ServingRevision] is the one rule for "which revision": a value
//     naming one of the function's revisions serves it, one naming none falls
//     back to the flag's default variant, and no usable value goes to the
//     manifest's DefaultRevision. [Set.PickRevision] (per request) and
//     [Set.Split] (the Knative traffic block) both answer through it.
//
// flagd behaviour followed here (flagd core/pkg/evaluator and the flagd
// testbed's gherkin suites, as of the "v2" fractional generation):
//
//   - Reasons: STATIC (no targeting), TARGETING_MATCH (targeting named a
//     variant; fractional splits too), DEFAULT (targeting returned null),
//     DISABLED (state DISABLED: no value, the caller's default is used),
//     ERROR with FLAG_NOT_FOUND, TYPE_MISMATCH, PARSE_ERROR (the JSONLogic
//     engine failed) or GENERAL (targeting named a variant that does not
//     exist).
//   - defaultVariant null or absent ("code default", flagd ADR
//     support-code-default): when nothing else decides, the result has no
//     value and no variant and reason DEFAULT; the caller's default is used.
//   - Targeting results that are not strings name variants by their JSON
//     text: true selects variant "true", 1 selects "1".
//   - Custom operators return null on bad input, so the default variant wins.
//   - A $ref flagd cannot substitute stays in the rule and its JSONLogic
//     engine fails on it: ERROR / PARSE_ERROR for that flag only.
//   - "targeting": null is run (it is not {}): null, so DEFAULT.
//   - Numbers: an integer request accepts a number variant only when it is
//     whole and within ±(2^53-1) (flagd ADR numeric-coercion); otherwise
//     TYPE_MISMATCH. A float request accepts any number.
package flags
