// Command etcd is the etcd server, built from this module so that its version
// is the one that k8s.io/kubernetes (pinned in ../../go.mod) resolves to.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
