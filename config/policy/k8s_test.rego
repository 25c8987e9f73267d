# Tests of config/policy/k8s.rego: `tether-agent policy test` runs every
# rule named test_*; each must be true.
package tether_test

import data.tether

pods := "/api/v1/namespaces/team-a/pods"

test_platform_members_read if {
	tether.allow with input as {"method": "GET", "path": pods, "groups": ["group:default/platform"]}
}

test_platform_members_do_not_write if {
	not tether.allow with input as {"method": "POST", "path": pods, "user": "user:default/jane", "groups": ["group:default/platform"]}
	tether.reason == "user:default/jane may only read" with input as {"method": "POST", "path": pods, "user": "user:default/jane", "groups": ["group:default/platform"]}
}

test_admins_write if {
	tether.allow with input as {"method": "POST", "path": pods, "groups": ["group:default/platform-admins"]}
}

test_nobody_reaches_kube_system if {
	not tether.allow with input as {"method": "GET", "path": "/api/v1/namespaces/kube-system/secrets", "groups": ["group:default/platform-admins"]}
}

test_groups_match_exactly if {
	not tether.allow with input as {"method": "GET", "path": pods, "groups": ["group:default/Platform", "group:default/platform-x"]}
}
