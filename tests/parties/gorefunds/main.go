// A Go net/http refunds upstream: POST /v1/payments/{id}/refund reads its body with
// encoding/json into a struct (or the form with r.FormValue), and logs what it ran.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
)

type refund struct {
	Amount float64 `json:"amount"`
	To     string  `json:"to"`
}

func main() {
	port, logPath := os.Args[1], os.Args[2]
	var mu sync.Mutex
	logf := func(v map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		f, _ := os.OpenFile(logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		defer f.Close()
		b, _ := json.Marshal(v)
		f.Write(append(b, '\n'))
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		entry := map[string]any{"path": r.URL.Path, "raw": r.URL.RawPath, "method": r.Method, "ct": r.Header.Get("Content-Type")}
		if r.Method == "POST" && len(parts) == 4 && parts[0] == "v1" && parts[1] == "payments" && parts[3] == "refund" {
			entry["view"] = "refund"
			var rf refund
			if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
				rf.To = r.FormValue("to")
				fmt.Sscan(r.FormValue("amount"), &rf.Amount)
			} else if err := json.NewDecoder(r.Body).Decode(&rf); err != nil {
				entry["error"] = err.Error()
				logf(entry)
				http.Error(w, err.Error(), 400)
				return
			}
			entry["amount"], entry["to"] = rf.Amount, rf.To
			logf(entry)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"refunded":%v,"to":%q}`, rf.Amount, rf.To)
			return
		}
		entry["view"] = "other"
		logf(entry)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	})
	http.ListenAndServe("127.0.0.1:"+port, nil)
}
