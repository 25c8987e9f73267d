# An example route policy (docs/identity.md): read-only for the platform
# group, writes (exec, port-forward, creating pods) only for platform
# admins, and never to kube-system. Test it with
#   tether-agent policy test config/policy/k8s.rego config/policy/k8s_test.rego
package tether

default allow := false

admins := "group:default/platform-admins"

readers := {"group:default/platform", admins}

reading if input.method in {"GET", "HEAD"}

in_kube_system if startswith(input.path, "/api/v1/namespaces/kube-system/")

allow if {
	reading
	some group in input.groups
	group in readers
	not in_kube_system
}

allow if {
	not reading
	admins in input.groups
	not in_kube_system
}

reason := "kube-system is off limits" if in_kube_system

reason := sprintf("%s may only read", [input.user]) if {
	not reading
	not in_kube_system
	not admins in input.groups
}
