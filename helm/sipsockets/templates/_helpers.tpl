{{/* Names, labels and the few values several templates derive the same way. */}}

{{- define "sipsockets.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sipsockets.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A name with a suffix, kept within the 63 characters of a label value / DNS label. */}}
{{- define "sipsockets.componentName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "sipsockets.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "sipsockets.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sipsockets.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sipsockets
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. The proxy's are exactly the operator's default proxy selector. */}}
{{- define "sipsockets.selectorLabels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "sipsockets.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end -}}

{{- define "sipsockets.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "sipsockets.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The label selector string the operator uses to find proxy pods. */}}
{{- define "sipsockets.proxySelector" -}}
{{- if .Values.operator.proxySelector -}}
{{- .Values.operator.proxySelector -}}
{{- else -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=proxy" (include "sipsockets.name" .) .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "sipsockets.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "sipsockets.proxyImage" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (default .Chart.AppVersion .Values.proxy.image.tag) -}}
{{- end -}}

{{- define "sipsockets.serviceAccountName" -}}
{{- include "sipsockets.componentName" (list . "operator") -}}
{{- end -}}

{{- define "sipsockets.miSecretName" -}}
{{- default (include "sipsockets.componentName" (list . "mi-token")) .Values.mi.existingSecret -}}
{{- end -}}

{{- define "sipsockets.bundledDatabase" -}}
{{- if not .Values.database.external.existingSecret }}true{{ end -}}
{{- end -}}

{{- define "sipsockets.dbSecretName" -}}
{{- default (include "sipsockets.componentName" (list . "db-url")) .Values.database.external.existingSecret -}}
{{- end -}}

{{- define "sipsockets.dbSecretKey" -}}
{{- if .Values.database.external.existingSecret -}}
{{- .Values.database.external.secretKey -}}
{{- else -}}
db-url
{{- end -}}
{{- end -}}

{{- define "sipsockets.postgresqlName" -}}
{{- include "sipsockets.componentName" (list . "postgresql") -}}
{{- end -}}

{{- define "sipsockets.webhookServiceName" -}}
{{- include "sipsockets.componentName" (list . "webhook") -}}
{{- end -}}

{{- define "sipsockets.webhookSecretName" -}}
{{- include "sipsockets.componentName" (list . "webhook-tls") -}}
{{- end -}}

{{- define "sipsockets.peeringName" -}}
{{- default (include "sipsockets.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{- define "sipsockets.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}true{{ end -}}
{{- end -}}

{{/* The container securityContext every chart container shares; the proxy adds NET_BIND_SERVICE. */}}
{{- define "sipsockets.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "sipsockets.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The schema init container: `sipproxy db init` is idempotent (tables created only when missing). The URL holds
the database password, so it is read from the pod's db-url Secret volume, never put on the command line
(readable in /proc/PID/cmdline).
*/}}
{{- define "sipsockets.dbInitContainer" -}}
- name: db-init
  image: {{ include "sipsockets.proxyImage" . }}
  imagePullPolicy: {{ .Values.proxy.image.pullPolicy }}
  command:
    - sipproxy
    - db
    - init
    - --db-url-file
    - /etc/sipsockets/db/db-url
    - --table-name
    - {{ .Values.database.tableName | quote }}
  securityContext:
    {{- include "sipsockets.containerSecurityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 64Mi
    limits:
      cpu: 500m
      memory: 128Mi
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: db-url
      mountPath: /etc/sipsockets/db
      readOnly: true
{{- end -}}

{{/* The sipproxy config file (sockets_mgm.db_url is filled in at pod start from the database Secret). */}}
{{- define "sipsockets.proxyConfig" -}}
{{- $p := .Values.proxy -}}
{{- $config := dict
  "sockets" $p.sockets
  "udp_workers" $p.udpWorkers
  "tcp_workers" $p.tcpWorkers
  "sockets_mgm" (dict
    "db_url" ""
    "table_name" .Values.database.tableName
    "processes" $p.socketsMgm.processes
    "max_sockets" $p.socketsMgm.maxSockets)
  "mi" (dict
    "listen" (printf "0.0.0.0:%d" (int .Values.mi.port))
    "root" .Values.mi.root
    "token_file" "/etc/sipsockets/mi/token")
  "routes" $p.routes
  "log_level" $p.logLevel
  "tcp_idle_timeout" $p.tcpIdleTimeout
-}}
{{- toYaml $config -}}
{{- end -}}
