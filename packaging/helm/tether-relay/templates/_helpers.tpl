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

{{/* The relay's TOML: the user's config with [listen], [store], [cluster] set by the chart. */}}
{{- define "tether-relay.config" -}}
{{- $config := dict }}
{{- $_ := set $config "listen" (dict "public" (printf "0.0.0.0:%d" (int .Values.ports.public)) "admin" (printf "0.0.0.0:%d" (int .Values.ports.admin))) }}
{{- /* The URL itself comes from TETHER_RELAY_STORE_URL (a Secret). */}}
{{- $_ := set $config "store" (dict "url" "postgres://set-by-TETHER_RELAY_STORE_URL") }}
{{- $_ := set $config "cluster" (dict "peer_listen" (printf "0.0.0.0:%d" (int .Values.ports.peer)) "peer_key_file" "/etc/tether/peer/key" "lease" .Values.lease) }}
{{- if .Values.adminKey.existingSecret }}
{{- $_ := set $config "admin" (dict "key_file" "/etc/tether/admin/key") }}
{{- end }}
{{- $_ := set $config "drain_timeout" (default (printf "%ds" (max 1 (sub (int .Values.terminationGracePeriodSeconds) 10))) .Values.drainTimeout) }}
{{- toToml $config }}
{{- with .Values.extraConfig }}
{{ . }}
{{- end }}
{{- end }}
