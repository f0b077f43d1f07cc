{{/*
Helpers shared by both modes. Every helper takes a chart context: this
chart's own `$`, or, from a parent chart that has Evenflow as a dependency,
`.Subcharts.evenflow` (so .Values, .Chart and .Release are Evenflow's).
*/}}

{{- define "evenflow.name" -}}
{{- default "evenflow" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "evenflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "evenflow.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "evenflow.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "evenflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evenflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "evenflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "evenflow.selectorLabels" . }}
app.kubernetes.io/version: {{ include "evenflow.tag" . | trunc 63 | quote }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/part-of: evenflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "evenflow.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "evenflow.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "evenflow.tag" .) -}}
{{- end -}}
{{- end -}}

{{- define "evenflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "evenflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "evenflow.configMapName" -}}
{{- printf "%s-config" (include "evenflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Where the config is mounted; the image's CMD reads the same path. */}}
{{- define "evenflow.configDir" -}}/etc/evenflow{{- end -}}
{{- define "evenflow.tokenDir" -}}/var/run/secrets/evenflow/admin-token{{- end -}}

{{/*
terminationGracePeriodSeconds: the preStop sleep, then Evenflow's drain,
then a margin for the process to exit before the kubelet kills it.
*/}}
{{- define "evenflow.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleep) (int .Values.drainTimeout) (int .Values.terminationMargin) -}}
{{- end -}}

{{/*
The listeners as JSON: [{name, port, portName, protocol, loopback}], checked.
A listener's port name is its name made an IANA service name (lower case,
letters, digits and '-', at most 15 characters).
*/}}
{{- define "evenflow.listeners" -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- range $i, $l := .Values.config.listeners -}}
{{- $listen := toString $l.listen -}}
{{- $port := regexFind "[0-9]+$" $listen -}}
{{- $host := trimSuffix (printf ":%s" $port) $listen | trimPrefix "[" | trimSuffix "]" -}}
{{- if or (not $port) (not (hasSuffix (printf ":%s" $port) $listen)) -}}
{{- fail (printf "config.listeners[%d].listen: %q: expected host:port" $i $listen) -}}
{{- end -}}
{{- $name := regexReplaceAll "[^a-z0-9-]+" (lower (toString $l.name)) "-" | regexReplaceAll "-+" "-" | trunc 15 | trimAll "-" -}}
{{- if not (regexMatch "[a-z]" $name) -}}
{{- $name = printf "l-%s" $name | trunc 15 | trimAll "-" -}}
{{- end -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "config.listeners[%d].name: %q gives the port name %q, as listener %q does: names must differ in their first 15 letters and digits" $i $l.name $name (get $seen $name)) -}}
{{- end -}}
{{- if eq $name "admin" -}}
{{- fail (printf "config.listeners[%d].name: %q: the port name admin is the admin API's" $i $l.name) -}}
{{- end -}}
{{- $_ := set $seen $name (toString $l.name) -}}
{{- $loopback := or (hasPrefix "127." $host) (eq $host "::1") (eq (lower $host) "localhost") -}}
{{- $out = append $out (dict "name" (toString $l.name) "port" (int $port) "portName" $name "protocol" (default "tcp" $l.protocol) "loopback" $loopback "index" $i) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Namespaces whose EndpointSlices a kubernetes source follows, as JSON. */}}
{{- define "evenflow.discoveryNamespaces" -}}
{{- $ns := list -}}
{{- $sources := list -}}
{{- range .Values.config.listeners -}}
{{- if and (kindIs "map" .backends) (hasKey (default dict .backends) "kubernetes") -}}
{{- $sources = append $sources .backends.kubernetes -}}
{{- end -}}
{{- range (default list .routes) -}}
{{- if and (kindIs "map" .backends) (hasKey (default dict .backends) "kubernetes") -}}
{{- $sources = append $sources .backends.kubernetes -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $sources -}}
{{- $ns = append $ns (default $.Release.Namespace (and (kindIs "map" .) .namespace)) -}}
{{- end -}}
{{- if $sources -}}
{{- $ns = concat $ns .Values.rbac.extraNamespaces -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* The Evenflow config file, rendered from .Values.config. */}}
{{- define "evenflow.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if hasKey $cfg "admin" -}}
{{- fail "config.admin: set adminPort (and adminToken) instead: the chart writes admin itself, listening on 0.0.0.0 for the kubelet's probes" -}}
{{- end -}}
{{- if hasKey $cfg "drain_timeout" -}}
{{- fail "config.drain_timeout: set drainTimeout (seconds) instead: the chart derives terminationGracePeriodSeconds from it" -}}
{{- end -}}
{{- $_ := include "evenflow.listeners" . -}}
{{- $admin := dict "listen" (printf "0.0.0.0:%d" (int .Values.adminPort)) -}}
{{- if .Values.adminToken.secretName -}}
{{- $_ := set $admin "token_file" (printf "%s/%s" (include "evenflow.tokenDir" .) .Values.adminToken.secretKey) -}}
{{- end -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- $_ := set $cfg "drain_timeout" (printf "%ds" (int .Values.drainTimeout)) -}}
{{- toYaml $cfg -}}
{{- end -}}
