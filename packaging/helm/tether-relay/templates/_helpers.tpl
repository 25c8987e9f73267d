{{- define "tether-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether-relay.fullname" -}}
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

{{- define "tether-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tether-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tether-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether-relay.peerService" -}}
{{- printf "%s-peers" (include "tether-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether-relay.peerKeySecret" -}}
{{- default (printf "%s-peer-key" (include "tether-relay.fullname" .)) .Values.peerKey.existingSecret }}
{{- end }}

{{/*
Replaces, in place, every whole number of a map (and of the maps and lists
in it) by an integer: Helm reads numbers of values files as float64, and
toToml writes those as 50.0, which the relay refuses for integers.
*/}}
{{- define "tether-relay.wholeNumbers" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}
{{- $_ := set $map $key (int64 $value) }}
{{- end }}
{{- else if kindIs "map" $value }}
{{- include "tether-relay.wholeNumbers" $value }}
{{- else if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- $box := dict "v" . }}
{{- include "tether-relay.wholeNumbers" $box }}
{{- $items = append $items $box.v }}
{{- end }}
{{- $_ := set $map $key $items }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when the chart mounts the admin key Secret. */}}
{{- define "tether-relay.mountsAdminKey" -}}
{{- if .Values.adminKey.existingSecret }}true{{- end }}
{{- end }}

{{/*
The relay's TOML: config, with [listen], [store] and [cluster] set by the
chart, and tls / admin.key_file from tls.* / adminKey.* when those are set.
*/}}
{{- define "tether-relay.config" -}}
{{- $v := .Values }}
{{- $config := deepCopy (default (dict) $v.config) }}
{{- include "tether-relay.wholeNumbers" $config }}
{{- $listen := dict "public" (printf "0.0.0.0:%d" (int $v.ports.public)) "admin" (printf "0.0.0.0:%d" (int $v.ports.admin)) }}
{{- if $v.ports.proxy }}
{{- $_ := set $listen "proxy" (printf "0.0.0.0:%d" (int $v.ports.proxy)) }}
{{- end }}
{{- if $v.routeDomain }}
{{- $_ := set $listen "route_domain" $v.routeDomain }}
{{- end }}
{{- $_ := set $config "listen" $listen }}
{{- /* The URL itself comes from TETHER_RELAY_STORE_URL (a Secret). */}}
{{- $_ := set $config "store" (dict "url" "postgres://set-by-TETHER_RELAY_STORE_URL") }}
{{- $cluster := default (dict) (get $config "cluster") }}
{{- $_ := set $cluster "peer_listen" (printf "0.0.0.0:%d" (int $v.ports.peer)) }}
{{- $_ := set $cluster "peer_key_file" "/etc/tether/peer/key" }}
{{- $_ := set $config "cluster" $cluster }}
{{- if include "tether-relay.mountsAdminKey" . }}
{{- $admin := default (dict) (get $config "admin") }}
{{- if hasKey $admin "key_file" }}
{{- fail "config.admin.key_file and adminKey.existingSecret both set: set one" }}
{{- end }}
{{- $_ := set $admin "key_file" "/etc/tether/admin/key" }}
{{- $_ := set $config "admin" $admin }}
{{- end }}
{{- if $v.tls.secretName }}
{{- if hasKey $config "tls" }}
{{- fail "config.tls and tls.secretName both set: set one" }}
{{- end }}
{{- $_ := set $config "tls" (dict "cert_file" "/etc/tether/tls/tls.crt" "key_file" "/etc/tether/tls/tls.key") }}
{{- end }}
{{- if not (hasKey $config "drain_timeout") }}
{{- $_ := set $config "drain_timeout" (printf "%ds" (max 1 (sub (int $v.terminationGracePeriodSeconds) 10))) }}
{{- end }}
{{- range $section, $value := $config }}
{{- if and (kindIs "map" $value) (not $value) }}
{{- $_ := unset $config $section }}
{{- end }}
{{- end }}
{{- toToml $config }}
{{- end }}
