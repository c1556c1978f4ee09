package demo

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCapacityAnswers429(t *testing.T) {
	srv := httptest.NewServer(New(Options{Capacity: 2, Latency: 300 * time.Millisecond, RetryAfter: 3}))
	defer srv.Close()
	var mu sync.Mutex
	codes := map[int]int{}
	retryAfter := ""
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(srv.URL+"/ingest", "text/plain", strings.NewReader("x"))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			if resp.StatusCode == 429 {
				retryAfter = resp.Header.Get("Retry-After")
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] != 2 || codes[429] != 4 || retryAfter != "3" {
		t.Fatalf("codes %v, Retry-After %q; want 2×200, 4×429 with Retry-After 3", codes, retryAfter)
	}
}

func TestFailRate(t *testing.T) {
	b := New(Options{FailRate: 1})
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("POST", "/ingest", strings.NewReader("x")))
	if rec.Code != 503 {
		t.Fatalf("fail rate 1 answered %d", rec.Code)
	}
	if s := b.Stats(); s.Received != 1 || s.ByStatus["503"] != 1 {
		t.Fatalf("stats %+v", s)
	}
}
