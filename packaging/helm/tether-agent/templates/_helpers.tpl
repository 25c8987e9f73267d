{{- define "tether-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tether-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tether-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tether-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tether-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tether-agent.tokenSecret" -}}
{{- if .Values.token.existingSecret }}
{{- .Values.token.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "tether-agent.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tether-agent.hasCA" -}}
{{- if or .Values.customCA.secretName .Values.customCA.configMapName }}true{{- end }}
{{- end }}

{{/*
Replaces, in place, every whole number of a map (and of the maps and lists
in it) by an integer. Helm reads numbers of values files as float64, and
toToml writes those as 443.0, which the agent refuses where it expects an
integer (connections, connect_ports).
*/}}
{{- define "tether-agent.wholeNumbers" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}
{{- $_ := set $map $key (int64 $value) }}
{{- end }}
{{- else if kindIs "map" $value }}
{{- include "tether-agent.wholeNumbers" $value }}
{{- else if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- $box := dict "v" . }}
{{- include "tether-agent.wholeNumbers" $box }}
{{- $items = append $items $box.v }}
{{- end }}
{{- $_ := set $map $key $items }}
{{- end }}
{{- end }}
{{- end }}

{{/* The admin listener's port, from config.admin.listen. */}}
{{- define "tether-agent.adminPort" -}}
{{- regexFind "[0-9]+$" .Values.config.admin.listen }}
{{- end }}

{{/* "true" when the chart mounts the token Secret (config.relay.token_file unset). */}}
{{- define "tether-agent.mountsToken" -}}
{{- if not (get (default (dict) .Values.config.relay) "token_file") }}true{{- end }}
{{- end }}

{{/*
The agent's TOML: config, with the keys the chart's own values fill in
(each of them mounts something). A key set both in config and through its
chart value fails the render.
*/}}
{{- define "tether-agent.config" -}}
{{- $v := .Values }}
{{- $config := deepCopy (default (dict) $v.config) }}
{{- include "tether-agent.wholeNumbers" $config }}
{{- $relay := default (dict) (get $config "relay") }}
{{- $_ := set $config "relay" $relay }}
{{- $_ := required "config.relay.url is required: the relay's wss://HOST/v1/agent/connect" (get $relay "url") }}
{{- if hasKey $relay "token" }}
{{- fail "config.relay.token would put the agent token in a ConfigMap: set token.existingSecret (or token.value) instead" }}
{{- end }}
{{- if include "tether-agent.mountsToken" . }}
{{- $_ := set $relay "token_file" "/etc/tether/token/token" }}
{{- if get $relay "accept_rotation" }}
{{- fail "config.relay.accept_rotation writes the rotated token to token_file, but the token Secret is mounted read-only: rotate by updating the Secret, or set config.relay.token_file to a writable volume of yours" }}
{{- end }}
{{- else if or $v.token.existingSecret $v.token.value }}
{{- fail "set token.existingSecret/token.value or config.relay.token_file (a file you mount), not both" }}
{{- end }}
{{- if and (include "tether-agent.hasCA" .) (not (hasKey $relay "ca_file")) }}
{{- $_ := set $relay "ca_file" "/etc/tether/ca/ca.pem" }}
{{- end }}
{{- range $key, $chartValue := dict "proxy" $v.proxy.url "proxy_username" $v.proxy.username "proxy_password_file" $v.proxy.passwordSecret.name }}
{{- if $chartValue }}
{{- if hasKey $relay $key }}
{{- fail (printf "config.relay.%s and proxy.* both set: set one" $key) }}
{{- end }}
{{- $_ := set $relay $key (ternary "/etc/tether/proxy/password" $chartValue (eq $key "proxy_password_file")) }}
{{- end }}
{{- end }}
{{- if $v.clientCertificate.secretName }}
{{- if or (hasKey $relay "client_cert_file") (hasKey $relay "client_key_file") }}
{{- fail "config.relay.client_cert_file/client_key_file and clientCertificate.secretName both set: set one" }}
{{- end }}
{{- $_ := set $relay "client_cert_file" "/etc/tether/client/tls.crt" }}
{{- $_ := set $relay "client_key_file" "/etc/tether/client/tls.key" }}
{{- end }}
{{- $agent := default (dict) (get $config "agent") }}
{{- $_ := set $config "agent" $agent }}
{{- if not (get $agent "name") }}
{{- $_ := set $agent "name" (include "tether-agent.fullname" .) }}
{{- end }}
{{- if $v.auditFile.enabled }}
{{- $audit := default (dict) (get $config "audit") }}
{{- if hasKey $audit "file" }}
{{- fail "config.audit.file and auditFile.enabled both set: set one" }}
{{- end }}
{{- $_ := set $audit "file" "/var/lib/tether/audit/audit.jsonl" }}
{{- $_ := set $config "audit" $audit }}
{{- end }}
{{- if not (hasKey $config "drain_timeout") }}
{{- $_ := set $config "drain_timeout" (printf "%ds" (max 1 (sub (int $v.terminationGracePeriodSeconds) 5))) }}
{{- end }}
{{- range $section, $value := $config }}
{{- if and (kindIs "map" $value) (not $value) }}
{{- $_ := unset $config $section }}
{{- end }}
{{- end }}
{{- toToml $config }}
{{- end }}
