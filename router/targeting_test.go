package router

import (
	"net/http/httptest"
	"testing"
)

func TestTargetingKeyOrder(t *testing.T) {
	cases := []struct {
		name, header, cookie, body, want string
		random                           bool
	}{
		{"header wins", "u-1", "c-2", `{"user_id": 3}`, "u-1", false},
		{"cookie next", "", "c-2", `{"user_id": 3}`, "c-2", false},
		{"body user_id", "", "", `{"k": 10, "user_id": 42}`, "42", false},
		{"body user_id as string", "", "", `{"user_id": "42"}`, "42", false},
		{"user_id before card_id", "", "", `{"card_id": "c-9", "user_id": 7}`, "7", false},
		{"card_id", "", "", `{"amount": 1.5, "card_id": "c-9", "nested": {"user_id": 1}}`, "c-9", false},
		{"nested fields do not count", "", "", `{"nested": {"user_id": 1}}`, "", true},
		{"not JSON", "", "", `user_id=4`, "", true},
		{"no body", "", "", ``, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/functions/fraud", nil)
			if tc.header != "" {
				r.Header.Set(UserIDHeader, tc.header)
			}
			if tc.cookie != "" {
				r.Header.Set("Cookie", UserCookie+"="+tc.cookie)
			}
			key, random := targetingKey(httpView{r}, []byte(tc.body))
			if random != tc.random || (!tc.random && key != tc.want) {
				t.Fatalf("key %q random %v, want %q random %v", key, random, tc.want, tc.random)
			}
			if random {
				again, _ := targetingKey(httpView{r}, []byte(tc.body))
				if len(key) != 32 || again == key {
					t.Errorf("random keys %q, %q: want fresh 128-bit keys", key, again)
				}
			}
		})
	}
}
