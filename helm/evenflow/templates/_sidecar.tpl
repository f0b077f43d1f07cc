{{/*
Library-style named templates: the Evenflow container, its volumes, its
ConfigMap and its RBAC. The gateway Deployment and the example client use
them; so can your own chart, with Evenflow as a dependency (mode: sidecar):

  # Chart.yaml
  dependencies:
    - {name: evenflow, version: 0.1.0, repository: "file://../evenflow"}

  # templates/deployment.yaml, in the pod spec
  serviceAccountName: {{ include "evenflow.serviceAccountName" .Subcharts.evenflow }}
  terminationGracePeriodSeconds: {{ include "evenflow.terminationGracePeriodSeconds" .Subcharts.evenflow }}
  initContainers:    # `containers:` when sidecar.native is false
    {{- include "evenflow.container" .Subcharts.evenflow | nindent 4 }}
  volumes:
    {{- include "evenflow.volumes" .Subcharts.evenflow | nindent 4 }}

The dependency itself renders the ConfigMap and the RBAC (its mode must be
sidecar). docs/deploy.md walks through it.
*/}}

{{/* The Evenflow container, as one list item. */}}
{{- define "evenflow.container" -}}
{{- $listeners := include "evenflow.listeners" . | fromJsonArray -}}
{{- $adminPort := int .Values.adminPort -}}
- name: evenflow
  image: {{ include "evenflow.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  # A native sidecar: started before the app containers, stopped after them.
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - {{ include "evenflow.configDir" . }}/evenflow.yaml
    - --log-format
    - {{ .Values.logFormat }}
    - --log-level
    - {{ .Values.logLevel }}
  ports:
    {{- range $listeners }}
    - name: {{ .portName }}
      containerPort: {{ .port }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ $adminPort }}
      protocol: TCP
  {{- with .Values.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # /healthz: the process runs; /readyz: listeners up and every discovery
  # source answered, 503 from the first moment of a drain.
  startupProbe:
    httpGet: {path: /healthz, port: {{ $adminPort }}}
    {{- toYaml .Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: {path: /healthz, port: {{ $adminPort }}}
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: {{ $adminPort }}}
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  {{- if gt (int .Values.preStopSleep) 0 }}
  # Evenflow drains on SIGTERM by itself (it stops accepting, live
  # connections go on for drainTimeout). The preStop sleep comes first, so
  # endpoint removal reaches kube-proxy and load balancers before that.
  lifecycle:
    preStop:
      {{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version }}
      sleep: {seconds: {{ int .Values.preStopSleep }}}
      {{- else }}
      exec: {command: ["sleep", "{{ int .Values.preStopSleep }}"]}
      {{- end }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: evenflow-config
      mountPath: {{ include "evenflow.configDir" . }}
      readOnly: true
    - name: evenflow-tmp
      mountPath: /tmp
    {{- if .Values.adminToken.secretName }}
    - name: evenflow-admin-token
      mountPath: {{ include "evenflow.tokenDir" . }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The pod volumes the Evenflow container mounts, as list items. */}}
{{- define "evenflow.volumes" -}}
- name: evenflow-config
  configMap:
    name: {{ include "evenflow.configMapName" . }}
- name: evenflow-tmp
  emptyDir: {sizeLimit: 16Mi}
{{- if .Values.adminToken.secretName }}
- name: evenflow-admin-token
  secret:
    secretName: {{ .Values.adminToken.secretName }}
    items:
      - {key: {{ .Values.adminToken.secretKey }}, path: {{ .Values.adminToken.secretKey }}}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod annotation that rolls the pods when the config changes (Evenflow reads it at start). */}}
{{- define "evenflow.podAnnotations" -}}
checksum/evenflow-config: {{ include "evenflow.config" . | sha256sum }}
{{- end -}}

{{/* The ConfigMap holding evenflow.yaml. */}}
{{- define "evenflow.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "evenflow.configMapName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "evenflow.labels" . | nindent 4 }}
data:
  evenflow.yaml: |
    {{- include "evenflow.config" . | nindent 4 }}
{{- end -}}

{{/*
The ServiceAccount, and in each namespace a kubernetes source follows a
Role allowing only get/list/watch on EndpointSlices, bound to it.
*/}}
{{- define "evenflow.rbac" -}}
{{- $sa := include "evenflow.serviceAccountName" . -}}
{{- $fullname := include "evenflow.fullname" . -}}
{{- if .Values.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $sa }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "evenflow.labels" . | nindent 4 }}
  {{- with .Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if .Values.rbac.create }}
{{- range $ns := include "evenflow.discoveryNamespaces" . | fromJsonArray }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $fullname }}-endpointslices
  namespace: {{ $ns }}
  labels:
    {{- include "evenflow.labels" $ | nindent 4 }}
rules:
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $fullname }}-endpointslices
  namespace: {{ $ns }}
  labels:
    {{- include "evenflow.labels" $ | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $fullname }}-endpointslices
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $.Release.Namespace }}
{{- end }}
{{- end }}
{{- end -}}
