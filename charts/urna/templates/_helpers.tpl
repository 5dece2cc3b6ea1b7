{{/* Common labels of every object. */}}
{{- define "urna.labels" -}}
app.kubernetes.io/part-of: urna
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "name" "host"). */}}
{{- define "urna.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* An image reference: (dict "root" $ "image" .Values.host.image).
     urna images: <registry>/<namespace>/<repository>:<tag or global tag or appVersion>;
     official third-party images (official: true) are <registry>/<repository>:<tag>.
     An optional image.digest (sha256:…) is appended: the kubelet then pulls exactly
     that image, whatever the tag points to now. */}}
{{- define "urna.image" -}}
{{- $g := .root.Values.global.image -}}
{{- $tag := .image.tag | default $g.tag | default .root.Chart.AppVersion -}}
{{- $ref := printf "%s/%s/%s:%s" $g.registry $g.namespace .image.repository $tag -}}
{{- if .image.official -}}
{{- $ref = printf "%s/%s:%s" $g.registry .image.repository $tag -}}
{{- end -}}
{{- with .image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .) -}}
{{- fail (printf "image digest %q is not sha256:<64 hex digits>" .) -}}
{{- end -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{ $ref }}
{{- end }}

{{/* Pod-level security: non-root, the runtime's default seccomp profile. */}}
{{- define "urna.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: no privilege escalation, no capabilities, read-only root. */}}
{{- define "urna.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* In-cluster addresses, built once here so every service gets the same ones. */}}
{{- define "urna.kafkaBrokers" -}}
{{ .Values.kafka.clusterName }}-kafka-bootstrap.{{ .Values.namespaces.kafka.name }}.svc.{{ .Values.global.clusterDomain }}:9092
{{- end }}

{{- define "urna.redisHost" -}}
urna-redis.{{ .Values.namespaces.data.name }}.svc.{{ .Values.global.clusterDomain }}
{{- end }}

{{/* The replica set's seed list: every member by its stable StatefulSet DNS name. */}}
{{- define "urna.mongoHosts" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.mongodb.replicas) -}}
{{- $hosts = append $hosts (printf "urna-mongodb-%d.urna-mongodb.%s.svc.%s:27017" $i $root.Values.namespaces.data.name $root.Values.global.clusterDomain) -}}
{{- end -}}
{{ join "," $hosts }}
{{- end }}

{{/* Env entries that build URNA_REDIS_URL from the Secret in the pod's namespace
     (Kubernetes expands $(VAR) from earlier entries). */}}
{{- define "urna.redisEnv" -}}
- name: URNA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: urna-redis, key: password}
- name: URNA_REDIS_URL
  value: "redis://:$(URNA_REDIS_PASSWORD)@{{ include "urna.redisHost" . }}:6379"
{{- end }}

{{/* The producers' idempotency store: the consumer's Redis, prefix and window (the
     two sides must agree on both). */}}
{{- define "urna.idempotencyEnv" -}}
{{ include "urna.redisEnv" . }}
{{ include "urna.envMap" (pick .Values.consumer.env "URNA_REDIS_PREFIX" "URNA_IDEMPOTENCY_WINDOW_SECS") }}
{{- end }}

{{/* URNA_REDIS_URL and URNA_MONGO_URL. */}}
{{- define "urna.storeEnv" -}}
{{ include "urna.redisEnv" . }}
- name: URNA_MONGO_PASSWORD
  valueFrom:
    secretKeyRef: {name: urna-mongodb, key: password}
- name: URNA_MONGO_URL
  value: "mongodb://{{ .Values.mongodb.rootUser }}:$(URNA_MONGO_PASSWORD)@{{ include "urna.mongoHosts" . }}/?replicaSet={{ .Values.mongodb.replicaSetName }}&authSource=admin"
{{- end }}

{{/* A map of URNA_* settings as env entries, in a stable order. */}}
{{- define "urna.envMap" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* HTTP probes on the services' own endpoints. */}}
{{- define "urna.httpProbes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/* NetworkPolicy pieces: DNS to any namespace; a namespace by its name label. */}}
{{- define "urna.np.dns" -}}
- to:
    - namespaceSelector: {}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end }}
{{- define "urna.np.ns" -}}
namespaceSelector:
  matchLabels:
    kubernetes.io/metadata.name: {{ . }}
{{- end }}

{{/* Redis maxmemory in MiB: the idempotency state of one window at the peak keyed rate,
     plus the counters and offsets (redis.sizing in values.yaml). */}}
{{- define "urna.redisMaxmemoryMiB" -}}
{{- $z := .Values.redis.sizing -}}
{{- $window := int (.Values.consumer.env.URNA_IDEMPOTENCY_WINDOW_SECS | default "600") -}}
{{- add (int $z.baseMiB) (div (mul $window (int $z.peakKeyedVotesPerSecond) (int $z.bytesPerKeyedVote)) 1048576) -}}
{{- end }}
